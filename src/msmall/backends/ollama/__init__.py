"""Ollama: `ollama serve` configured through its environment, then the model pulled and loaded
through its API. Everything msmall knows about Ollama is in this folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmall.backends.engine import Engine, VersionProbe
from msmall.backends.ollama.plan import plan_ollama

if TYPE_CHECKING:
    from msmall.diagnose import LogRules
    from msmall.fit import FitReport
    from msmall.plan import LaunchPlan
    from msmall.progress import Reporter


def memory_fit(profile, gpus, free, backend, env=None) -> FitReport:
    from msmall.backends.ollama.fit import fit_ollama

    return fit_ollama(profile, gpus, free, backend, env)


def log_rules() -> LogRules:
    from msmall.backends.ollama import logs

    return logs.LOG_RULES


def probe_version() -> VersionProbe:
    from msmall.backends.ollama import version

    return version.probe()


def post_ready(plan: LaunchPlan, reporter: Reporter) -> None:
    from msmall.backends.ollama import ready

    ready.prepare(plan, reporter)


def is_ollama(base_url: str) -> bool:
    from msmall.backends.ollama import api

    return api.is_ollama(base_url)


ENGINE = Engine(
    name="ollama",
    label="Ollama",
    flavor="ollama",
    default_port=11434,
    plan=plan_ollama,
    fit=memory_fit,
    load_log_rules=log_rules,
    probe_version=probe_version,
    post_ready=post_ready,
    reusable_server=is_ollama,
    reuse_note="its own settings (OLLAMA_CONTEXT_LENGTH, OLLAMA_KV_CACHE_TYPE...) apply, not the "
    "profile's.",
    has_api_key=False,
)
