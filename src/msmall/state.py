"""Records of running deployments in the user state dir, one JSON file each, written atomically.

A record never holds a secret: no API key, no HF token, only the redacted plan.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from msmall import paths
from msmall.errors import ConfigError, EnvironmentProblem


class Deployment(BaseModel):
    name: str
    profile: str
    backend: str  # as the user named it (an engine or an alias such as "docker")
    base_url: str
    served_model_name: str
    flavor: Literal["vllm", "ollama"] = "vllm"
    log_path: str
    pid: int | None = None
    pid_create_time: float = 0.0
    # sha256 of the engine's command line: with the create time, proves a pid is still ours.
    pid_cmdline_sha: str | None = None
    # "starting" from before the engine is launched until the smoke checks pass, then "ready":
    # a SIGKILLed msmall still leaves a record that `ps` shows and `stop` acts on.
    status: Literal["starting", "ready"] = "ready"
    # The msmall process that runs this serve (foreground or still starting), so `stop` can
    # end a start in progress the way Ctrl-C would.
    owner_pid: int | None = None
    owner_create_time: float = 0.0
    # One id per serve: cleanup removes the record only if it is still this serve's.
    launch_id: str | None = None
    container_id: str | None = None
    # True when msmall reused an Ollama daemon it did not start: `stop` leaves it running.
    external: bool = False
    started_at: float = Field(default_factory=time.time)
    plan: dict[str, Any] = Field(default_factory=dict)


def _safe_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}", name):
        raise ConfigError(
            f"'{name}' is not a valid deployment name",
            "Use letters, digits, '.', '_' and '-' (e.g. --name my-server).",
        )
    return name


def record_path(name: str) -> Path:
    return paths.deployments_dir() / f"{_safe_name(name)}.json"


def log_path_for(name: str) -> Path:
    paths.ensure_private_dir(paths.state_dir())
    return paths.ensure_private_dir(paths.logs_dir()) / f"{_safe_name(name)}.log"


# A record is a few KB; anything bigger is not one of ours and is not read into memory.
MAX_RECORD_BYTES = 1 << 20


class BrokenRecord(EnvironmentProblem):
    """A record file msmall cannot use (garbage, wrong types, a directory, unreadable)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"the record of '{name}' is unusable: {reason}",
            f"`msmall stop {name}` removes it (nothing is signalled).",
        )
        self.name = name
        self.reason = reason


def save(dep: Deployment) -> Path:
    paths.ensure_private_dir(paths.state_dir())
    path = record_path(dep.name)
    paths.atomic_write_text(path, dep.model_dump_json(indent=2) + "\n")
    return path


def _read(path: Path, name: str) -> Deployment:
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise BrokenRecord(name, f"{path} is a directory, not a record") from None
    except OSError as exc:
        raise BrokenRecord(name, f"cannot read {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise BrokenRecord(name, f"{path} is {kind}, not a record")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > MAX_RECORD_BYTES:
            raise BrokenRecord(name, f"{path} is too large to be a record")
        try:
            data = fh.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise BrokenRecord(name, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        dep = Deployment.model_validate_json(data)
    except (ValidationError, ValueError):
        raise BrokenRecord(name, f"{path} is not a valid msmall record") from None
    if dep.name != name:
        raise BrokenRecord(name, f"{path} names another deployment ('{dep.name}')")
    return dep


def load(name: str) -> Deployment | None:
    """The record, None when there is none; BrokenRecord when the file is unusable."""
    try:
        return _read(record_path(name), name)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _record_names() -> list[str]:
    folder = paths.deployments_dir()
    paths.check_readable_dir(paths.state_dir())
    paths.check_readable_dir(folder)
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    return [f.name[: -len(".json")] for f in entries if f.name.endswith(".json")]


def load_all_checked() -> tuple[list[Deployment], list[BrokenRecord]]:
    """Every usable record, and every unusable one beside them (one bad file hides nothing)."""
    good: list[Deployment] = []
    bad: list[BrokenRecord] = []
    for name in _record_names():
        try:
            _safe_name(name)
            dep = load(name)
        except ConfigError:
            bad.append(BrokenRecord(name, "not a valid deployment name"))
            continue
        except BrokenRecord as exc:
            bad.append(exc)
            continue
        if dep is not None:
            good.append(dep)
    return good, bad


def load_all() -> list[Deployment]:
    return load_all_checked()[0]


def remove(name: str) -> None:
    try:
        record_path(name).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        from msmall.errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"cannot remove the record {record_path(name)}: {exc.strerror or exc}",
            "Remove it by hand.",
        ) from None


def dumps_public(dep: Deployment) -> dict[str, Any]:
    return json.loads(dep.model_dump_json())
