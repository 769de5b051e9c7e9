"""Ollama: `ollama serve` configured through its environment, then the model pulled and loaded
through its API. Everything msmall knows about Ollama is in this folder."""

from __future__ import annotations

from msmall.backends.engine import Engine
from msmall.backends.ollama import api, logs, ready, version
from msmall.backends.ollama.fit import fit_ollama
from msmall.backends.ollama.plan import plan_ollama

ENGINE = Engine(
    name="ollama",
    label="Ollama",
    flavor="ollama",
    default_port=11434,
    plan=plan_ollama,
    fit=fit_ollama,
    log_rules=logs.LOG_RULES,
    probe_version=version.probe,
    post_ready=ready.prepare,
    reusable_server=api.is_ollama,
    reuse_note="its own settings (OLLAMA_CONTEXT_LENGTH, OLLAMA_KV_CACHE_TYPE...) apply, not the "
    "profile's.",
    has_api_key=False,
)
