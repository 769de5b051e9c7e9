"""Detached deployments: list them with live health, read their logs, stop them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from msmall import state
from msmall.errors import ConfigError

FOLLOW_POLL_S = 0.2


def is_running(dep: state.Deployment) -> bool | None:
    """None when it cannot be told (a container whose daemon is unreachable)."""
    if dep.container_id:
        from msmall.runtimes.container import container_running

        return container_running(dep.container_id)
    if dep.pid is None:
        return dep.external
    from msmall.runtimes.process import pid_alive

    return pid_alive(dep.pid, dep.pid_create_time)


def live_status(dep: state.Deployment) -> dict[str, Any]:
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
        with health._client(dep.base_url, None, 1.0) as client:
            health_state = health.probe(client, dep.flavor, None).stage
    return {
        **state.dumps_public(dep),
        "running": running,
        "health": health_state,
        "status": "running" if running else "stale (process gone)",
    }


def list_deployments() -> list[dict[str, Any]]:
    from msmall.runtimes.container import orphan_containers

    found = [live_status(dep) for dep in state.load_all()]
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


def stop(name: str) -> dict[str, Any]:
    """Stop one deployment; a stale record is cleaned up. Returns what was done."""
    dep = state.load(name)
    if dep is None:
        from msmall.runtimes.container import stop_container_by_deployment

        if stop_container_by_deployment(name):
            return {"name": name, "action": "stopped container found by label"}
        _get(name)
    assert dep is not None
    action = "removed stale record"
    if dep.external:
        action = "forgot the record (the Ollama daemon was not started by msmall: left running)"
    elif dep.container_id:
        from msmall.runtimes.container import stop_container

        if stop_container(dep.container_id):
            action = "stopped and removed container"
    elif dep.pid is not None and is_running(dep):
        from msmall.runtimes.process import stop_process_group

        stop_process_group(dep.pid, dep.pid_create_time, grace_s=15.0)
        action = "stopped"
    state.remove(name)
    return {"name": name, "action": action}


def stop_all() -> list[dict[str, Any]]:
    return [stop(dep.name) for dep in state.load_all()]


def _labelled_container_id(name: str) -> str | None:
    """A container carrying `msmall.deployment=name` when no record names it (state dir wiped)."""
    from msmall.runtimes.container import msmall_containers

    found = msmall_containers(name)
    return found[0].id if found else None


def log_lines(name: str, n: int) -> list[str]:
    from pathlib import Path

    from msmall.runtimes.process import last_lines

    if state.load(name) is None:
        container_id = _labelled_container_id(name)
        if container_id:
            from msmall.runtimes.container import container_log_lines

            return container_log_lines(container_id, n)
    dep = _get(name)
    if dep.container_id:
        from msmall.runtimes.container import container_log_lines

        # A detached container keeps logging after msmall exits: ask the daemon, not the file.
        lines = container_log_lines(dep.container_id, n)
        if lines:
            return lines
    return last_lines(Path(dep.log_path), n)


def follow(
    name: str, emit: Callable[[str], None], stop_when: Callable[[], bool] | None = None
) -> None:
    """Print new log lines as they come, until the server ends (or Ctrl-C)."""
    from pathlib import Path

    from msmall.runtimes.process import LogTail

    if state.load(name) is None:
        container_id = _labelled_container_id(name)
        if container_id:
            from msmall.runtimes.container import follow_container

            follow_container(container_id, emit)
            return
    dep = _get(name)
    if dep.container_id:
        from msmall.runtimes.container import follow_container

        follow_container(dep.container_id, emit)
        return
    tail = LogTail(Path(dep.log_path), start_at_end=True)
    for line in _follow_lines(tail, lambda: is_running(dep), stop_when):
        emit(line)


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
