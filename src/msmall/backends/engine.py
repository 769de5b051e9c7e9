"""What an engine is to msmall: one record of everything it knows, filled by its own folder.

An engine is *what* runs (vLLM, Ollama, the simulator); a runtime is *where* (a host process or a
container). Each `backends/<engine>/__init__.py` builds one `Engine`; `msmall.backends` is the
registry that lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from msmall.backends.base import PlanOptions
    from msmall.diagnose import LogRules
    from msmall.fit import FitReport
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile
    from msmall.progress import Reporter

Runtime = Literal["process", "container"]

# (profile, options, the engine itself) -> the plan for a runtime.
PlanFn = Callable[["Profile", "PlanOptions", "Engine"], "LaunchPlan"]
# (profile, GPU totals MiB, GPU free MiB or None, backend name, the engine's environment or None
# for the profile's own) -> the memory verdict.
FitFn = Callable[
    ["Profile", Sequence[int], "Sequence[int] | None", str, "Mapping[str, str] | None"], "FitReport"
]
# (plan, reporter) -> None: work between "the port answers" and "clients may use it".
PostReadyFn = Callable[["LaunchPlan", "Reporter"], None]


@dataclass(frozen=True)
class VersionProbe:
    """The installed engine's version, as the engine's own CLI or package tells it."""

    version: str | None
    problem: str | None = None  # why the version could not be read, when it is installed


@dataclass(frozen=True)
class Engine:
    name: str  # the registry key and the --backend value
    label: str  # shown to users: "vLLM"
    # How health checks talk to it: the vLLM OpenAI server, or Ollama's API beside /v1.
    flavor: Literal["vllm", "ollama"]
    default_port: int
    plan: PlanFn  # the host-process plan
    # The plan for the container runtime; None when the engine has no image msmall runs.
    container_plan: PlanFn | None = None
    fit: FitFn | None = None  # None: needs no GPU
    # The engine's log rules, loaded on first use: compiling them is most of a dry run's cost.
    load_log_rules: Callable[[], LogRules] | None = None
    probe_version: Callable[[], VersionProbe] | None = None
    post_ready: PostReadyFn | None = None
    # True when the server at base_url is one of this engine's that msmall may reuse as it is
    # (an Ollama daemon the user already runs); None: never reuse.
    reusable_server: Callable[[str], bool] | None = None
    reuse_note: str | None = None  # what the user should know about a reused server
    # vLLM shards the model over tensor_parallel_size GPUs and refuses to start with fewer.
    tensor_parallel: bool = False
    # The engine sizes "max_model_len: auto" itself only as a number msmall passes: the preflight
    # resolves it to the largest context that fits.
    resolves_auto_context: bool = False
    needs_gpu: bool = True
    # False for engines with no authentication at all (Ollama): exposure gets a warning instead
    # of a required key.
    has_api_key: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def log_rules(self) -> LogRules | None:
        return self.load_log_rules() if self.load_log_rules is not None else None
