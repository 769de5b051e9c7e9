"""The engine registry: the only list of engine names (and `PlanOptions`, what every plan takes).

Built-in engines are imported lazily (so `msmall --help` loads none of them); tests and plugins
add theirs with `register()`. A backend, as users name it, is an engine or an alias for an engine
in a runtime: `docker` is vLLM in a container.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING

from msmall.backends.base import PlanOptions
from msmall.errors import ConfigError

if TYPE_CHECKING:
    from msmall.backends.engine import Engine, Runtime
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

# name -> module whose ENGINE attribute is the record.
_BUILTIN = {
    "ollama": "msmall.backends.ollama",
    "vllm": "msmall.backends.vllm",
    "simulator": "msmall.backends.simulator",
}
# backend -> (engine, runtime)
ALIASES: dict[str, tuple[str, Runtime]] = {"docker": ("vllm", "container")}

_registered: dict[str, Engine] = {}


def register(engine: Engine) -> None:
    """Add (or replace) an engine; its name becomes a valid backend everywhere."""
    _registered[engine.name] = engine


def unregister(name: str) -> None:
    _registered.pop(name, None)


def engine_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*_BUILTIN, *_registered]))


def backend_names() -> tuple[str, ...]:
    """What --backend and a profile's `backend:` accept, in the order help text shows them."""
    names = list(engine_names())
    names[names.index("vllm") + 1 : names.index("vllm") + 1] = list(ALIASES)
    return tuple(names)


def get_engine(name: str) -> Engine:
    if name in _registered:
        return _registered[name]
    if name not in _BUILTIN:
        raise ConfigError(
            f"unknown backend '{name}'", f"Choose one of: {', '.join(backend_names())}"
        )
    return importlib.import_module(_BUILTIN[name]).ENGINE


def resolve(backend: str) -> tuple[Engine, Runtime]:
    """The engine and runtime a backend name means."""
    engine_name, runtime = ALIASES.get(backend, (backend, "process"))
    engine = get_engine(engine_name)
    if runtime == "container" and engine.container_plan is None:
        raise ConfigError(f"the {engine.label} engine has no container image msmall can run")
    return engine, runtime


def default_port(backend: str) -> int:
    return resolve(backend)[0].default_port


def build_plan(profile: Profile, options: PlanOptions | None = None) -> LaunchPlan:
    """The engine's plan for a profile, for the runtime its backend names. No hardware is read
    here: `launcher.final_plan` adds what the hardware decides and the preflight verdict."""
    options = options or PlanOptions()
    options = replace(options, backend=options.backend or profile.backend)
    engine, runtime = resolve(options.backend)
    plan_fn = engine.container_plan if runtime == "container" else engine.plan
    assert plan_fn is not None  # resolve() refuses engines without a container plan
    return plan_fn(profile, options, engine)


def diagnose_log(log_text: str, backend: str = "vllm"):
    """The cause of a failure in a backend's log, by that engine's rules (None if none known)."""
    from msmall.diagnose import LogRules, diagnose

    engine, runtime = resolve(backend)
    return diagnose(log_text, engine.log_rules or LogRules(), runtime)


def log_activity(line: str, backend: str = "vllm") -> str | None:
    """What one log line of a backend says the engine is doing, None for noise."""
    from msmall.diagnose import LogRules, engine_activity

    return engine_activity(line, resolve(backend)[0].log_rules or LogRules())
