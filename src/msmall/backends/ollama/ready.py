"""After Ollama's port answers: pull the model, load it, and check what it can do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmall.errors import EndpointUnhealthy

if TYPE_CHECKING:
    from msmall.plan import LaunchPlan
    from msmall.progress import Reporter


def prepare(plan: LaunchPlan, reporter: Reporter) -> None:
    from msmall import health
    from msmall.backends.ollama import api
    from msmall.models import get_model

    model = plan.pull_model or plan.served_model_name
    if not api.has_model(plan.base_url, model):
        reporter.stage(f"pulling {model}")
        api.pull(
            plan.base_url,
            model,
            on_progress=lambda p: reporter.progress(p.status, p.completed, p.total),
        )
    reporter.stage(f"loading {model} into memory")
    api.preload(plan.base_url, model)
    entry = api.loaded(plan.base_url, model)
    if entry:
        warning = api.offload_warning(entry)
        if warning:
            reporter.warn(warning)
    caps = api.capabilities(plan.base_url, model)
    missing = [
        c
        for c, wanted in (("tools", plan.tools), ("vision", plan.vision))
        if wanted and c not in caps
    ]
    if missing:
        spec = get_model(plan.model)
        need = ".".join(map(str, spec.ollama_min_version))
        raise EndpointUnhealthy(
            f"Ollama's {model} lacks the {' and '.join(missing)} capability "
            f"(has: {', '.join(caps) or 'none'})",
            f"Use a {spec.default_ollama_tag.split(':')[0]} tag on Ollama >= {need} "
            "(`ollama --version`), or --set tools=false / vision=false.",
        )
    # Only now does Ollama's /v1/models list the model under the name clients will use.
    health.wait_ready(plan.base_url, "ollama", model, timeout_s=60)
