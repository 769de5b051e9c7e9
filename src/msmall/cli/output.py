"""Rendering helpers shared by the commands: results to stdout, progress and errors to stderr."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@lru_cache(maxsize=1)
def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@lru_cache(maxsize=1)
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def status_style(status: str) -> str:
    return {
        "ok": "green",
        "warn": "yellow",
        "fail": "red",
        "fits": "green",
        "tight": "yellow",
        "does_not_fit": "red",
        "skip": "dim",
    }.get(status, "")
