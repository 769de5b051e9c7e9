"""The serve pipeline as functions: choose a profile, plan, preflight, start, wait, smoke, record.

`cli/serve.py` calls these; tests drive them directly. Progress goes to a Reporter so the same
pipeline runs under a live terminal view, plain stderr lines, or a test recorder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from msmall.backends import PlanOptions, build_plan
from msmall.errors import (
    ConfigError,
    EndpointUnhealthy,
    EngineUnavailable,
    EnvironmentProblem,
    Interrupted,
    MsmallError,
)
from msmall.plan import LaunchPlan, redact_text, secret_values
from msmall.profiles import Profile, load_profile, parse_set

TAIL_LINES = 20


@dataclass
class ServeRequest:
    profile: str | None
    overrides: list[str] = field(default_factory=list)
    options: PlanOptions = field(default_factory=PlanOptions)
    detach: bool = False
    smoke: bool = True
    force: bool = False
    pull: str = "missing"
    json_output: bool = False
    ready_timeout_s: float | None = None
    # Start, prove, stop: for CI smoke tests and a first try of msmall.
    check_only: bool = False


class Reporter(Protocol):
    def stage(self, text: str) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def log_lines(self, lines: list[str]) -> None: ...
    def activity(self, text: str) -> None: ...
    def progress(self, label: str, completed: int | None, total: int | None) -> None: ...
    def check(self, result: Any) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def stage(self, text: str) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def log_lines(self, lines: list[str]) -> None: ...
    def activity(self, text: str) -> None: ...
    def progress(self, label: str, completed: int | None, total: int | None) -> None: ...
    def check(self, result: Any) -> None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Planning


def choose_profile(profile_ref: str | None, read_hardware: bool) -> tuple[str, list[str]]:
    """The profile to use and why; without --profile, the recommended one for this machine."""
    if profile_ref:
        return profile_ref, []
    if read_hardware:
        try:
            from msmall.doctor import recommend_for_this_machine
        except ImportError:
            recommend_for_this_machine = None
        if recommend_for_this_machine is not None:
            name, why = recommend_for_this_machine()
            if name:
                return name, [f"using profile {name}: {why}"]
            raise EnvironmentProblem(
                f"no --profile given and no shipped profile fits this machine ({why})",
                "Run `msmall doctor` for details, or `msmall serve --profile demo` for the simulator.",
            )
    raise ConfigError(
        "no --profile given",
        "Pick one from `msmall profiles list`, e.g. --profile 4090-q4 (or --profile demo for the "
        "simulator).",
    )


def plan_for(
    profile_ref: str | None, overrides: list[str], options: PlanOptions, read_hardware: bool
) -> tuple[Profile, LaunchPlan, list[str]]:
    ref, notes = choose_profile(profile_ref, read_hardware)
    prof = load_profile(ref, parse_set(overrides))
    return prof, build_plan(prof, options), notes


def preflight(prof: Profile, plan: LaunchPlan, force: bool, reporter: Reporter) -> Profile:
    """The memory-fit check before anything loads (see doctor.preflight); may resolve 'auto'."""
    try:
        from msmall.doctor import preflight as doctor_preflight
    except ImportError:
        return prof
    return doctor_preflight(prof, plan, force=force, reporter=reporter)


def _host_driver_major() -> int | None:
    from msmall.hardware import read_inventory

    version = read_inventory().driver_version
    try:
        return int(version.split(".")[0]) if version else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Signals


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a foreground serve the same way Ctrl-C does: stop the server, then exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While stopping the server, a second Ctrl-C must not abandon it half-stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


# ---------------------------------------------------------------------------------------------
# Diagnosis


def failure_from_log(
    log_path: Path, backend: str, headline: str, secrets: list[str | None]
) -> MsmallError:
    """Turn a dead or never-ready server into cause + fix + the last log lines."""
    from msmall.diagnose import diagnose
    from msmall.supervisor import last_lines

    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    tail = [redact_text(line, secrets) for line in last_lines(log_path, TAIL_LINES)]
    found = diagnose(text, "vllm" if backend in ("docker", "simulator") else backend)
    details = [f"last {len(tail)} lines of {log_path}:", *tail] if tail else []
    if found is None:
        return EngineUnavailable(
            headline, f"See the log: msmall logs (full log at {log_path}).", details
        )
    return EngineUnavailable(f"{headline}: {found.cause}", found.fix, details)


# ---------------------------------------------------------------------------------------------
# Serving


def _engine_label(plan: LaunchPlan) -> str:
    return {
        "vllm": "vLLM",
        "ollama": "Ollama",
        "docker": "vLLM (docker)",
        "simulator": "simulator",
    }[plan.backend]


def _host_port(plan: LaunchPlan) -> tuple[str, int]:
    parts = urlsplit(plan.base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class _LogFollower:
    """Feeds new log lines to the reporter, with engine activity picked out."""

    def __init__(self, log_path: Path, backend: str, reporter: Reporter, secrets: list[str | None]):
        from msmall.supervisor import LogTail

        self.tail = LogTail(log_path)
        self.backend = "vllm" if backend in ("docker", "simulator") else backend
        self.reporter = reporter
        self.secrets = secrets

    def pump(self) -> None:
        from msmall.diagnose import engine_activity

        lines = [redact_text(ln, self.secrets) for ln in self.tail.read_new()]
        if not lines:
            return
        self.reporter.log_lines(lines)
        for line in lines:
            activity = engine_activity(line, self.backend)
            if activity:
                self.reporter.activity(activity)


def serve(request: ServeRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    reporter = reporter or NullReporter()
    prof, plan, notes = plan_for(
        request.profile, request.overrides, request.options, read_hardware=True
    )
    for note in notes:
        reporter.info(note)
    options = request.options
    if plan.backend == "docker" and options.driver_major is None:
        # Default images from vLLM 0.20 on need an R580+ driver; older drivers get -cu129.
        options = replace(options, driver_major=_host_driver_major())
        plan = build_plan(prof, options)
    prof = preflight(prof, plan, request.force, reporter)
    from msmall.doctor import hf_token_warning

    token_warning = hf_token_warning(prof, plan.backend)
    if token_warning:
        reporter.warn(token_warning)
    if prof.serving.max_model_len != plan.max_model_len:
        plan = build_plan(prof, options)
    for warning in plan.warnings:
        reporter.warn(warning)
    if plan.backend == "docker":
        from msmall.docker_runtime import serve_docker

        return serve_docker(plan, request, reporter)
    return _serve_process(plan, request, reporter)


def _serve_process(plan: LaunchPlan, request: ServeRequest, reporter: Reporter) -> dict[str, Any]:
    from msmall import health, state, supervisor

    # Everything the engine could print: the key, secret flags, secret env (the plan's and ours).
    secrets: list[str | None] = list(secret_values(plan.argv, plan.env, os.environ, plan.api_key))
    host, port = _host_port(plan)
    log_path = state.log_path_for(plan.deployment)
    existing = state.load(plan.deployment)
    if (
        existing
        and (existing.pid is None or supervisor.pid_alive(existing.pid, existing.pid_create_time))
        and not existing.external
    ):
        raise ConfigError(
            f"a deployment named '{plan.deployment}' is already running ({existing.base_url})",
            f"Stop it with `msmall stop {plan.deployment}`, or pick another --name.",
        )

    external = False
    proc = None
    if plan.backend == "ollama" and supervisor.port_in_use(host, port):
        from msmall import ollama_api

        if not ollama_api.is_ollama(plan.base_url):
            supervisor.ensure_port_free(host, port)
        external = True
        reporter.warn(
            f"reusing the Ollama daemon already running on {host}:{port}: its own settings "
            "(OLLAMA_CONTEXT_LENGTH, OLLAMA_KV_CACHE_TYPE...) apply, not the profile's."
        )
    else:
        supervisor.ensure_port_free(host, port)

    detached_ok = False
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            follower = None
            if not external:
                reporter.stage(f"starting {_engine_label(plan)}")
                proc = supervisor.start_process(plan, log_path)
                follower = _LogFollower(log_path, plan.backend, reporter, secrets)

            def alive() -> bool:
                if follower:
                    follower.pump()
                return proc is None or proc.poll() is None

            reporter.stage(f"waiting for {plan.base_url} (loading)")
            try:
                health.wait_ready(
                    plan.base_url,
                    plan.flavor,
                    plan.served_model_name if plan.flavor == "vllm" else None,
                    api_key=plan.api_key,
                    alive=alive,
                    timeout_s=request.ready_timeout_s,
                )
            except EndpointUnhealthy as exc:
                if proc is not None:
                    if follower:
                        follower.pump()
                    code = proc.poll()
                    headline = (
                        f"{_engine_label(plan)} exited with code {code} before it was ready"
                        if code is not None
                        else f"{_engine_label(plan)} did not become ready: {exc.message}"
                    )
                    raise failure_from_log(log_path, plan.backend, headline, secrets) from None
                raise
            ready_after = time.monotonic() - started

            if plan.backend == "ollama":
                _prepare_ollama(plan, request, reporter)

            result, next_step = finish_ready(
                plan,
                request,
                reporter,
                log_path=log_path,
                ready_after=ready_after,
                pid=proc.pid if proc else None,
                pid_create_time=proc.create_time if proc else 0.0,
                external=external,
            )
            if next_step != "foreground":
                detached_ok = next_step == "detached"
                return result
            _wait_foreground(proc, follower, plan, log_path, secrets)
            return result
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: the server was stopped" if proc else "interrupted"
            ) from None
        finally:
            if not detached_ok:
                with signals_deferred():
                    reporter.close()
                    if proc is not None:
                        proc.stop()
                    current = state.load(plan.deployment)
                    if current is not None and (proc is None or current.pid == proc.pid):
                        state.remove(plan.deployment)


def finish_ready(
    plan: LaunchPlan,
    request: ServeRequest,
    reporter: Reporter,
    *,
    log_path: Path,
    ready_after: float,
    **ids: Any,
) -> tuple[dict[str, Any], str]:
    """Smoke checks, the result, the state record, for every backend once the server is ready.

    `ids` say what runs it (pid, pid_create_time, external, or container_id). Returns the result
    and what the caller does next: "done" (--check: stop the server), "detached" (leave it
    running) or "foreground" (serve until Ctrl-C).
    """
    from msmall import health, state

    smoke_report = None
    if request.smoke:
        reporter.stage("smoke checks: chat, streaming, tools" + (", vision" if plan.vision else ""))
        smoke_report = health.smoke(
            plan.base_url,
            plan.served_model_name,
            api_key=plan.api_key,
            tools=plan.tools,
            vision=plan.vision,
            flavor=plan.flavor,
            on_result=reporter.check,
        )
        if not smoke_report.ok:
            failed = [c for c in smoke_report.checks if not c.ok and not c.skipped]
            raise EndpointUnhealthy(
                "smoke check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                next((c.fix for c in failed if c.fix), "See `msmall logs`."),
            )
    result = {
        "deployment": plan.deployment,
        "profile": plan.profile,
        "backend": plan.backend,
        "base_url": plan.base_url,
        "openai_base_url": plan.openai_base_url,
        "model": plan.served_model_name,
        "pid": ids.get("pid"),
        "container_id": ids.get("container_id"),
        "image": plan.image,
        "log_path": str(log_path),
        "ready_after_s": round(ready_after, 3),
        "smoke": smoke_report.to_dict() if smoke_report else None,
        "detached": request.detach,
    }
    if request.check_only:
        reporter.stage(f"all checks passed at {plan.openai_base_url}; stopping (--check)")
        return result, "done"
    state.save(
        state.Deployment(
            name=plan.deployment,
            profile=plan.profile,
            backend=plan.backend,
            base_url=plan.base_url,
            served_model_name=plan.served_model_name,
            flavor=plan.flavor,
            log_path=str(log_path),
            plan=plan.to_public_dict(),
            **ids,
        )
    )
    if request.detach:
        reporter.stage(
            f"ready at {plan.openai_base_url} (detached; `msmall stop {plan.deployment}`)"
        )
        return result, "detached"
    reporter.stage(
        f"ready at {plan.openai_base_url}  model {plan.served_model_name}  (Ctrl-C stops)"
    )
    return result, "foreground"


def _wait_foreground(proc, follower, plan: LaunchPlan, log_path: Path, secrets) -> None:
    if proc is None:
        # A reused Ollama daemon: nothing of ours to watch; wait for Ctrl-C.
        while True:
            time.sleep(0.5)
    while proc.poll() is None:
        follower.pump()
        time.sleep(0.2)
    follower.pump()
    raise failure_from_log(
        log_path, plan.backend, f"{_engine_label(plan)} exited with code {proc.poll()}", secrets
    )


def _prepare_ollama(plan: LaunchPlan, request: ServeRequest, reporter: Reporter) -> None:
    from msmall import health, ollama_api

    model = plan.pull_model or plan.served_model_name
    if not ollama_api.has_model(plan.base_url, model):
        reporter.stage(f"pulling {model}")
        ollama_api.pull(
            plan.base_url,
            model,
            on_progress=lambda p: reporter.progress(p.status, p.completed, p.total),
        )
    reporter.stage(f"loading {model} into memory")
    ollama_api.preload(plan.base_url, model)
    entry = ollama_api.loaded(plan.base_url, model)
    if entry:
        warning = ollama_api.offload_warning(entry)
        if warning:
            reporter.warn(warning)
    caps = ollama_api.capabilities(plan.base_url, model)
    missing = [
        c
        for c, wanted in (("tools", plan.tools), ("vision", plan.vision))
        if wanted and c not in caps
    ]
    if missing:
        raise EndpointUnhealthy(
            f"Ollama's {model} lacks the {' and '.join(missing)} capability (has: {', '.join(caps) or 'none'})",
            "Use a mistral-small3.1 tag on Ollama >= 0.6.5 (`ollama --version`), or --set tools=false / vision=false.",
        )
    # Only now does Ollama's /v1/models list the model under the name clients will use.
    health.wait_ready(plan.base_url, "ollama", model, timeout_s=60)
