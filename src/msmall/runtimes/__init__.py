"""Where a plan runs: a host process or a container. Both give the serve pipeline a `Handle`.

A runner's ``start(plan, engine, log_path, reporter, force=, pull=)`` checks what must be free
(port, container name), starts the server and returns a handle; the launcher does the rest
(readiness, smoke checks, records, stopping) the same way for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from msmall.backends.engine import Engine, Runtime
    from msmall.plan import LaunchPlan
    from msmall.progress import Reporter


class Handle(Protocol):
    label: str  # who ran it, for headlines: "vLLM", "the container"
    log_path: Path | None  # the log msmall follows; None for a server it only reuses
    stopped_message: str  # what Ctrl-C did
    poll_s: float  # how often the foreground wait asks alive()

    @property
    def ids(self) -> dict[str, Any]: ...  # what the state record keeps (pid, container_id...)
    def alive(self) -> bool: ...
    def exit_code(self) -> int | None: ...
    def settle_logs(self) -> None: ...
    def stop(self) -> None: ...
    def owns(self, record: Any) -> bool: ...  # is this state record this handle's?


class Runner(Protocol):
    def start(
        self,
        plan: LaunchPlan,
        engine: Engine,
        log_path: Path,
        reporter: Reporter,
        *,
        force: bool = False,
        pull: str = "missing",
    ) -> Handle: ...


def runner_for(runtime: Runtime) -> Runner:
    if runtime == "container":
        from msmall.runtimes.container import ContainerRunner

        return ContainerRunner()
    from msmall.runtimes.process import ProcessRunner

    return ProcessRunner()
