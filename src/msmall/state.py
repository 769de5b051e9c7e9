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
from msmall.errors import ConfigError


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
    return paths.logs_dir() / f"{_safe_name(name)}.log"


def save(dep: Deployment) -> Path:
    path = record_path(dep.name)
    paths.atomic_write_text(path, dep.model_dump_json(indent=2) + "\n")
    return path


def load(name: str) -> Deployment | None:
    path = record_path(name)
    try:
        return Deployment.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError):
        return None


def load_all() -> list[Deployment]:
    folder = paths.deployments_dir()
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(Deployment.model_validate_json(f.read_text(encoding="utf-8")))
        except (ValidationError, ValueError, OSError):
            continue
    return out


def remove(name: str) -> None:
    try:
        record_path(name).unlink()
    except FileNotFoundError:
        pass


def dumps_public(dep: Deployment) -> dict[str, Any]:
    return json.loads(dep.model_dump_json())
