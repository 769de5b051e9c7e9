"""vLLM: `vllm serve MODEL` on the host, or the vllm/vllm-openai image in a container. Its flag
and version rules, memory fit, log rules and version probe are all in this folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmall.backends.engine import Engine, VersionProbe
from msmall.backends.vllm.container import plan_docker
from msmall.backends.vllm.plan import plan_vllm

if TYPE_CHECKING:
    from msmall.diagnose import LogRules
    from msmall.fit import FitReport

# `vllm --version` imports torch (the package metadata lookup comes first and is instant).
VLLM_VERSION_TIMEOUT_S = 30.0


def probe_version() -> VersionProbe:
    from msmall.backends.vllm import versions

    return VersionProbe(versions.installed_vllm_version(timeout_s=VLLM_VERSION_TIMEOUT_S))


def memory_fit(profile, gpus, free, backend, env=None) -> FitReport:
    # vLLM's memory use depends on its flags, not on environment variables msmall models.
    from msmall.backends.vllm.fit import fit_vllm

    return fit_vllm(profile, gpus, free, backend)


def log_rules() -> LogRules:
    from msmall.backends.vllm import logs

    return logs.LOG_RULES


ENGINE = Engine(
    name="vllm",
    label="vLLM",
    flavor="vllm",
    default_port=8000,
    plan=plan_vllm,
    container_plan=plan_docker,
    fit=memory_fit,
    load_log_rules=log_rules,
    probe_version=probe_version,
    tensor_parallel=True,
    resolves_auto_context=True,
)
