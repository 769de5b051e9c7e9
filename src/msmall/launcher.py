"""The serve pipeline: one final plan, then one pipeline over a runtime.

`final_plan()` turns a profile, overrides, options and one hardware inventory (read once) into the
finished LaunchPlan: image tag by driver, `auto` resolved, the preflight verdict, notes and
warnings attached. `serve`, `--dry-run`, `--json`, the state record and export all use it, so what
is printed is what runs. `serve()` then runs the same steps for every runtime: start through the
runner, wait for readiness while following the log, the engine's post-ready steps, smoke checks,
the state record, and a foreground wait or a detach.

`cli/serve.py` calls these; tests drive them directly. Progress goes to a Reporter
(msmall.progress), so the same pipeline runs under a live terminal view, plain stderr lines, or a
test recorder.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmall import backends
from msmall.backends.base import PlanOptions
from msmall.errors import (
    ConfigError,
    EndpointUnhealthy,
    EngineUnavailable,
    EnvironmentProblem,
    Interrupt,
    Interrupted,
    MsmallError,
    forget_interrupts,
    interrupt,
    raise_if_interrupted,
)
from msmall.plan import LaunchPlan, redact_text
from msmall.progress import NullReporter, RecordingReporter, Reporter

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.diagnose import LogRules
    from msmall.hardware import Inventory
    from msmall.profiles import Profile
    from msmall.runtimes import Handle

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


# ---------------------------------------------------------------------------------------------
# The final plan


class _Profiles:
    """Every known profile, loaded at most once per plan (only a recommendation needs them)."""

    def __init__(self) -> None:
        self._all: list[Profile] | None = None

    def all(self) -> list[Profile]:
        if self._all is None:
            from msmall.preflight import known_profiles

            self._all = known_profiles()
        return self._all


def choose_profile(
    profile_ref: str | None, inventory: Inventory, profiles: list[Profile]
) -> tuple[str, list[str]]:
    """The profile to use and why; without --profile, the recommended one for this machine."""
    from msmall.preflight import recommend_for

    if profile_ref:
        return profile_ref, []
    name, why = recommend_for(inventory, profiles)
    if name:
        return name, [f"using profile {name}: {why}"]
    raise EnvironmentProblem(
        f"no --profile given and no shipped profile fits this machine ({why})",
        "Run `msmall doctor` for details, or `msmall serve --profile demo` for the simulator.",
    )


def final_plan(
    profile_ref: str | None,
    overrides: list[str] | None = None,
    options: PlanOptions | None = None,
    *,
    force: bool = False,
    inventory: Inventory | None = None,
) -> LaunchPlan:
    """The plan `serve` runs and `--dry-run` prints, decided once against this machine.

    Raises the same errors for both: a bad profile (ConfigError, exit 2), a plan the machine
    cannot hold (EnvironmentProblem, exit 3; ``force`` turns it into a warning).
    """
    from msmall import hardware, weights
    from msmall.preflight import preflight
    from msmall.profiles import load_profile, parse_set

    options = options or PlanOptions()
    inv = inventory if inventory is not None else hardware.read_inventory(host=False)
    known = _Profiles()
    ref, notes = choose_profile(profile_ref, inv, known.all() if not profile_ref else [])
    prof = load_profile(ref, parse_set(overrides))
    options = replace(options, backend=options.backend or prof.backend)
    engine, runtime = backends.resolve(options.backend)
    if runtime == "container" and options.driver_major is None:
        # Default images from vLLM 0.20 on need an R580+ driver; older drivers get -cu129.
        options = replace(options, driver_major=hardware.driver_major(inv.driver_version))
    plan = backends.build_plan(prof, options)
    recorder = RecordingReporter()
    others = None
    if inv.gpus and engine.needs_gpu:
        others = [p for p in known.all() if p.name != prof.name]
    checked = preflight(prof, plan, inv, force=force, reporter=recorder, others=others)
    if checked.profile is not prof:
        plan = backends.build_plan(checked.profile, options)
    token_warning = weights.hf_token_warning(checked.profile, engine.name)
    return plan.model_copy(
        update={
            "notes": [*notes, *recorder.infos],
            "warnings": [*plan.warnings, *recorder.warnings]
            + ([token_warning] if token_warning else []),
            "preflight": checked.to_dict(),
        }
    )


# ---------------------------------------------------------------------------------------------
# Signals


# Closing the terminal (SIGHUP) and `kill` (SIGTERM) end a serve the way Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end a serve the same way Ctrl-C does: stop the server, then exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    forget_interrupts()
    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Around "start the engine, write its pid": a signal there would leave an engine no record
    names. The signal is noted and acts (as KeyboardInterrupt) right after, when the handle
    exists. Handlers, not a signal mask: a blocked mask would be inherited by the engine."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    watched = (signal.SIGINT, *STOP_SIGNALS)
    previous = {sig: signal.signal(sig, note) for sig in watched}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if pending:
        raise Interrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While stopping the server, a second Ctrl-C must not abandon it half-stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = (signal.SIGINT, *STOP_SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in watched}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------
# Diagnosis


def failure_from_log(
    log_path: Path | None, rules: LogRules | None, runtime: str, headline: str, secrets: list
) -> MsmallError:
    """Turn a dead or never-ready server into cause + fix + the last log lines."""
    from msmall.diagnose import diagnose
    from msmall.runtimes.process import last_lines

    if log_path is None:
        return EngineUnavailable(headline)
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    tail = [redact_text(line, secrets) for line in last_lines(log_path, TAIL_LINES)]
    found = diagnose(text, rules, runtime) if rules is not None else None
    details = [f"last {len(tail)} lines of {log_path}:", *tail] if tail else []
    if found is None:
        return EngineUnavailable(
            redact_text(headline, secrets),
            f"See the log: msmall logs (full log at {log_path}).",
            details,
        )
    fix = redact_text(found.fix, secrets) if found.fix else found.fix
    return EngineUnavailable(
        f"{redact_text(headline, secrets)}: {redact_text(found.cause, secrets)}", fix, details
    )


class _LogFollower:
    """Feeds new log lines to the reporter, with engine activity picked out."""

    def __init__(
        self, log_path: Path | None, rules: LogRules | None, reporter: Reporter, secrets: list
    ) -> None:
        from msmall.runtimes.process import LogTail

        self.tail = LogTail(log_path) if log_path is not None else None
        self.rules = rules
        self.reporter = reporter
        self.secrets = secrets

    def pump(self) -> None:
        from msmall.diagnose import engine_activity

        if self.tail is None:
            return
        lines = [redact_text(ln, self.secrets) for ln in self.tail.read_new()]
        if not lines:
            return
        self.reporter.log_lines(lines)
        for line in lines:
            activity = engine_activity(line, self.rules) if self.rules else None
            if activity:
                self.reporter.activity(activity)


# ---------------------------------------------------------------------------------------------
# Serving


def _refuse_running(plan: LaunchPlan) -> None:
    from msmall import deployments, state

    try:
        existing = state.load(plan.deployment)
    except state.BrokenRecord:
        existing = None  # an unusable record names nothing that runs: this serve replaces it
    if existing is not None and not existing.external and deployments.is_running(existing):
        raise ConfigError(
            f"a deployment named '{plan.deployment}' is already running ({existing.base_url})",
            f"Stop it with `msmall stop {plan.deployment}`, or pick another --name.",
        )
    # A port held by another msmall engine that is still loading (bound, not yet listening).
    from msmall.runtimes.process import host_port

    port = host_port(plan.base_url)[1]
    for other in state.load_all():
        if other.name == plan.deployment or other.external:
            continue
        if host_port(other.base_url)[1] == port and deployments.is_running(other):
            raise EnvironmentProblem(
                f"port {port} is held by the msmall deployment '{other.name}' ({other.status})",
                f"Stop it with `msmall stop {other.name}`, or pick another --port.",
            )


@contextlib.contextmanager
def name_lock(name: str) -> Iterator[None]:
    """One serve per deployment name at a time: an flock on state/locks/NAME.lock, held for the
    whole serve (the kernel drops it when msmall dies, even by SIGKILL)."""
    import fcntl
    import os

    from msmall import paths, state

    state.record_path(name)  # validates the name
    folder = paths.ensure_private_dir(paths.ensure_private_dir(paths.state_dir()) / "locks")
    try:
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot lock {folder / name}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another msmall is already serving or starting '{name}'",
                f"Wait for it, stop it (`msmall stop {name}`), or pick another --name.",
            ) from None
        yield
    finally:
        os.close(fd)


def serve(request: ServeRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    """Plan, start, prove and then serve (or detach, or stop for --check)."""
    reporter = reporter or NullReporter()
    plan = final_plan(request.profile, request.overrides, request.options, force=request.force)
    for note in plan.notes:
        reporter.info(note)
    for warning in plan.warnings:
        reporter.warn(warning)
    return run_plan(plan, request, reporter)


def run_plan(plan: LaunchPlan, request: ServeRequest, reporter: Reporter) -> dict[str, Any]:
    """The one pipeline, for every engine and runtime."""
    with name_lock(plan.deployment):
        return _run_locked(plan, request, reporter)


def _record(plan: LaunchPlan, log_path: Path, launch_id: str, **fields: Any) -> None:
    import os

    from msmall import state
    from msmall.runtimes.process import process_identity

    me = os.getpid()
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
            launch_id=launch_id,
            owner_pid=me,
            owner_create_time=process_identity(me)[0],
            **fields,
        )
    )


def _run_locked(plan: LaunchPlan, request: ServeRequest, reporter: Reporter) -> dict[str, Any]:
    import secrets as secrets_mod

    from msmall import health, state
    from msmall.runtimes import runner_for

    engine, runtime = backends.resolve(plan.backend)
    secrets: list[str | None] = list(plan.secrets())
    _refuse_running(plan)
    log_path = state.log_path_for(plan.deployment)
    handle: Handle | None = None
    detached_ok = False
    launch_id = secrets_mod.token_hex(8)
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            # Recorded before the engine exists: a SIGKILLed msmall leaves a record that `ps`
            # shows and `stop` acts on, whatever moment it died.
            _record(plan, log_path, launch_id, status="starting")
            with signals_held():
                handle = runner_for(runtime).start(
                    plan,
                    engine,
                    log_path,
                    reporter,
                    force=request.force,
                    pull=request.pull,
                    # A foreground serve's engine dies with msmall; a detached one outlives it.
                    die_with_parent=not request.detach,
                    launch_id=launch_id,
                )
                if handle.ids.get("external"):
                    state.remove(plan.deployment)
                else:
                    _record(plan, log_path, launch_id, status="starting", **handle.ids)
            follower = _LogFollower(handle.log_path, engine.log_rules, reporter, secrets)

            def alive() -> bool:
                raise_if_interrupted()
                follower.pump()
                return handle.alive()

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
                _check_answering_server(handle, plan)
            except EndpointUnhealthy as exc:
                if handle.log_path is None:
                    raise
                handle.settle_logs()
                follower.pump()
                code = handle.exit_code()
                headline = (
                    f"{handle.label} exited with code {code} before it was ready"
                    if code is not None
                    else f"{handle.label} did not become ready: {exc.message}"
                )
                raise failure_from_log(
                    handle.log_path, engine.log_rules, runtime, headline, secrets
                ) from None
            ready_after = time.monotonic() - started
            if engine.post_ready is not None:
                engine.post_ready(plan, reporter)

            result, next_step = finish_ready(
                plan,
                request,
                reporter,
                log_path=log_path,
                ready_after=ready_after,
                launch_id=launch_id,
                **handle.ids,
            )
            # A stop signal whose raise was lost during the smoke checks still stops it here.
            raise_if_interrupted()
            if next_step != "foreground":
                detached_ok = next_step == "detached"
                return result
            _wait_foreground(handle, follower, engine, runtime, secrets)
            return result
        except KeyboardInterrupt:
            raise Interrupted(handle.stopped_message if handle else "interrupted") from None
        finally:
            if not detached_ok:
                with signals_deferred():
                    reporter.close()
                    if handle is not None:
                        handle.stop()
                    try:
                        current = state.load(plan.deployment)
                    except MsmallError:
                        current = None
                    if current is not None and current.launch_id == launch_id:
                        state.remove(plan.deployment)


def _check_answering_server(handle: Handle, plan: LaunchPlan) -> None:
    """The server that answered must be the one msmall started: two serves on one port race,
    the loser's engine fails to listen, and the winner's would answer the loser's probes."""
    from msmall.runtimes.process import host_port

    check = getattr(handle, "answering_is_ours", None)
    if check is None:
        return
    port = host_port(plan.base_url)[1]
    foreign = check(port)
    if foreign is not None:
        raise EnvironmentProblem(
            f"port {port} is served by another process (pid {foreign}), "
            "not the server msmall started",
            "Another server took the port first: pick another --port, or stop that one.",
        )


def finish_ready(
    plan: LaunchPlan,
    request: ServeRequest,
    reporter: Reporter,
    *,
    log_path: Path,
    ready_after: float,
    launch_id: str | None = None,
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
        "model_id": plan.model,
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
    if ids.get("external"):
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
                launch_id=launch_id,
                **ids,
            )
        )
    else:
        _record(plan, log_path, launch_id or "", status="ready", **ids)
    if request.detach:
        reporter.stage(
            f"ready at {plan.openai_base_url} (detached; `msmall stop {plan.deployment}`)"
        )
        return result, "detached"
    reporter.stage(
        f"ready at {plan.openai_base_url}  model {plan.served_model_name}  (Ctrl-C stops)"
    )
    return result, "foreground"


def _wait_foreground(
    handle: Handle, follower: _LogFollower, engine: Engine, runtime: str, secrets: list
) -> None:
    while handle.alive():
        raise_if_interrupted()
        follower.pump()
        time.sleep(handle.poll_s)
    handle.settle_logs()
    follower.pump()
    raise failure_from_log(
        handle.log_path,
        engine.log_rules,
        runtime,
        f"{handle.label} exited with code {handle.exit_code()}",
        secrets,
    )
