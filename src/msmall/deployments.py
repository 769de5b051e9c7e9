"""Detached deployments: list them with live health, read their logs, stop them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from msmall import state
from msmall.errors import ConfigError

FOLLOW_POLL_S = 0.2


def foreign_reason(dep: state.Deployment) -> str | None:
    """Why the pid a process record names is not the engine msmall started (None: it is)."""
    from msmall.runtimes.process import foreign_reason as reason

    return reason(dep.pid, dep.pid_create_time, dep.pid_cmdline_sha)


def owner_alive(dep: state.Deployment) -> bool:
    """The msmall process that runs this serve (a start in progress, a foreground serve)."""
    from msmall.runtimes.process import pid_alive

    if dep.owner_pid is None or dep.owner_pid <= 1 or not dep.owner_create_time:
        return False
    return pid_alive(dep.owner_pid, dep.owner_create_time)


def is_running(dep: state.Deployment) -> bool | None:
    """None when it cannot be told (a container whose daemon is unreachable)."""
    if dep.container_id:
        from msmall.runtimes.container import container_running

        return container_running(dep.container_id)
    if dep.pid is None:
        if dep.external or (dep.status == "starting" and owner_alive(dep)):
            return True
        if dep.status == "starting" and dep.launch_id:
            from msmall.runtimes.process import find_by_launch_id

            return bool(find_by_launch_id(dep.launch_id, dep.started_at))
        return False
    return foreign_reason(dep) is None


def _stale_status(dep: state.Deployment) -> str:
    reason = foreign_reason(dep) if dep.pid is not None else None
    if reason is None or reason.endswith("has exited"):
        return "stale (process gone)"
    return f"stale record ({reason}: never signalled)"


def live_status(dep: state.Deployment, api_key: str | None = None) -> dict[str, Any]:
    from msmall import health

    running = is_running(dep)
    if running is None:
        return {
            **state.dumps_public(dep),
            "running": None,
            "health": "unknown",
            "status": "unknown (Docker daemon unreachable)",
        }
    health_state = "stale"
    if running:
        health_state = "starting"
        if dep.status != "starting" or dep.pid is not None or dep.container_id:
            keyed = bool((dep.plan or {}).get("api_key"))
            with health._client(dep.base_url, api_key if keyed else None, 1.0) as client:
                health_state = health.probe(client, dep.flavor, None).stage
    status = ("starting" if dep.status == "starting" else "running") if running else None
    return {
        **state.dumps_public(dep),
        "running": running,
        "health": health_state,
        "status": status or _stale_status(dep),
    }


def _broken_row(bad: state.BrokenRecord) -> dict[str, Any]:
    return {
        "name": bad.name,
        "running": False,
        "health": "unknown",
        "status": f"broken record: {bad.reason}",
    }


def list_deployments(api_key: str | None = None) -> list[dict[str, Any]]:
    from msmall.runtimes.container import orphan_containers

    good, bad = state.load_all_checked()
    found = [live_status(dep, api_key) for dep in good] + [_broken_row(b) for b in bad]
    known = {d.get("container_id") for d in found}
    return found + [c for c in orphan_containers() if c["container_id"] not in known]


def _get(name: str) -> state.Deployment:
    dep = state.load(name)
    if dep is None:
        names = [d.name for d in state.load_all()]
        raise ConfigError(
            f"no deployment named '{name}'",
            f"Running: {', '.join(names)}" if names else "Nothing is recorded: see `msmall ps`.",
        )
    return dep


# How long `stop` waits for an msmall that is starting a server to stop it and exit.
OWNER_STOP_S = 30.0


def _stop_owner(dep: state.Deployment) -> bool:
    """Ask the msmall that runs this serve to stop it, as Ctrl-C would (it stops the engine,
    its container, and removes the record). True when it did so within OWNER_STOP_S."""
    import os
    import signal

    import psutil

    if not owner_alive(dep) or dep.owner_pid == os.getpid():
        return False
    assert dep.owner_pid is not None
    from msmall.runtimes.process import wait_exited

    try:
        owner = psutil.Process(dep.owner_pid)
        os.kill(dep.owner_pid, signal.SIGTERM)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return True
    return not wait_exited([owner], OWNER_STOP_S)


def stop(name: str) -> dict[str, Any]:
    """Stop one deployment; a stale record is cleaned up. Returns what was done."""
    try:
        dep = state.load(name)
    except state.BrokenRecord as bad:
        state.remove(name)
        return {
            "name": name,
            "action": f"removed unusable record ({bad.reason}); nothing signalled",
        }
    if dep is None:
        from msmall.runtimes.container import stop_container_by_deployment

        if stop_container_by_deployment(name):
            return {"name": name, "action": "stopped container found by label"}
        _get(name)
    assert dep is not None
    action = "removed stale record"
    # A start in progress or a foreground serve: its msmall stops the engine as Ctrl-C would,
    # so that terminal shows "interrupted" (exit 130), not an engine that died by itself.
    starting = dep.status == "starting"
    if _stop_owner(dep):
        dep = state.load(name) if record_exists(name) else None
        if dep is None:
            done = "the start in progress was interrupted" if starting else "by its msmall serve"
            return {"name": name, "action": f"stopped ({done})"}
        # Its msmall exited but left the record: the engine may still be running, and the code
        # below stops it by the record. The action then says whose serve was stopped.
        action = "stopped the start in progress" if starting else "stopped its msmall serve"
    if dep.external:
        action = "forgot the record (the Ollama daemon was not started by msmall: left running)"
    elif dep.container_id:
        from msmall.runtimes.container import stop_container

        if stop_container(dep.container_id):
            action = "stopped and removed container"
    elif dep.pid is None and dep.status == "starting" and dep.launch_id:
        # msmall died between starting the engine and writing its pid: find it by its tag.
        from msmall.runtimes.process import find_by_launch_id, process_identity, stop_recorded

        for pid in find_by_launch_id(dep.launch_id, dep.started_at):
            created, sha = process_identity(pid)
            if stop_recorded(pid, created, sha, grace_s=15.0):
                action = "stopped (found by its launch id)"
    elif dep.pid is not None:
        from msmall.runtimes.process import stop_recorded

        if stop_recorded(dep.pid, dep.pid_create_time, dep.pid_cmdline_sha, grace_s=15.0):
            action = "stopped"
        else:
            reason = foreign_reason(dep)
            if reason and not reason.endswith("has exited"):
                action = f"removed stale record ({reason}); nothing signalled"
    state.remove(name)
    return {"name": name, "action": action}


def record_exists(name: str) -> bool:
    return state.record_path(name).exists()


def stop_all() -> list[dict[str, Any]]:
    """Stop every deployment; one that cannot be stopped is reported and the rest still are."""
    from msmall.errors import MsmallError

    good, bad = state.load_all_checked()
    done = []
    for name in [d.name for d in good] + [b.name for b in bad]:
        try:
            done.append(stop(name))
        except MsmallError as exc:
            done.append({"name": name, "action": f"failed: {exc.message}", "error": True})
    return done


def _labelled_container_id(name: str) -> str | None:
    """A container carrying `msmall.deployment=name` when no record names it (state dir wiped)."""
    from msmall.runtimes.container import msmall_containers

    found = msmall_containers(name)
    return found[0].id if found else None


def log_secrets(pid: int | None = None, container_id: str | None = None) -> list[str]:
    """Secret values an engine may have written into its own log (vLLM prints its non-default
    args, tokens included), to blank out of what `msmall logs` shows.

    Records never hold secrets, so they are read where the engine got them: the running engine's
    own command line and environment (a process msmall started, or the container's config), and
    this shell's environment (a host process inherits it; HF_TOKEN is passed to containers from
    it by name).
    """
    import os

    from msmall.plan import secret_values

    argv: list[str] = []
    env: dict[str, str] = {}
    if pid is not None:
        import psutil

        try:
            from msmall.runtimes.process import settled_cmdline

            proc = psutil.Process(pid)
            argv, env = settled_cmdline(proc), proc.environ()
        except (psutil.Error, OSError):
            pass
    elif container_id:
        from msmall.runtimes.container import container_config

        argv, env = container_config(container_id)
    return secret_values(argv, env, os.environ)


def log_lines(name: str, n: int) -> list[str]:
    from pathlib import Path

    from msmall.plan import redact_text
    from msmall.runtimes.process import last_lines

    if state.load(name) is None:
        container_id = _labelled_container_id(name)
        if container_id:
            from msmall.runtimes.container import container_log_lines

            return container_log_lines(container_id, n, log_secrets(None, container_id))
    dep = _get(name)
    if dep.container_id:
        from msmall.runtimes.container import container_log_lines

        # A detached container keeps logging after msmall exits: ask the daemon, not the file.
        lines = container_log_lines(dep.container_id, n, log_secrets(None, dep.container_id))
        if lines:
            return lines
    secrets = log_secrets(_own_pid(dep), dep.container_id)
    return [redact_text(line, secrets) for line in last_lines(Path(dep.log_path), n)]


def _own_pid(dep: state.Deployment) -> int | None:
    """The engine's pid when it is still the process msmall started (never another's)."""
    if dep.pid is None or foreign_reason(dep) is not None:
        return None
    return dep.pid


def follow(
    name: str, emit: Callable[[str], None], stop_when: Callable[[], bool] | None = None
) -> None:
    """Print new log lines as they come, until the server ends (or Ctrl-C)."""
    from pathlib import Path

    from msmall.plan import redact_text
    from msmall.runtimes.process import LogTail

    if state.load(name) is None:
        container_id = _labelled_container_id(name)
        if container_id:
            from msmall.runtimes.container import follow_container

            secrets = log_secrets(None, container_id)
            follow_container(container_id, lambda line: emit(redact_text(line, secrets)))
            return
    dep = _get(name)
    if dep.container_id:
        from msmall.runtimes.container import follow_container

        secrets = log_secrets(None, dep.container_id)
        follow_container(dep.container_id, lambda line: emit(redact_text(line, secrets)))
        return
    secrets = log_secrets(_own_pid(dep))
    tail = LogTail(Path(dep.log_path), start_at_end=True)
    for line in _follow_lines(tail, lambda: is_running(dep), stop_when):
        emit(redact_text(line, secrets))


def _follow_lines(tail, running: Callable[[], bool], stop_when) -> Iterator[str]:
    while True:
        lines = tail.read_new()
        yield from lines
        if stop_when and stop_when():
            return
        if not lines:
            if not running():
                yield from tail.read_new()
                return
            time.sleep(FOLLOW_POLL_S)
