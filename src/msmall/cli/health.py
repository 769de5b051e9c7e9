"""`msmall health URL`: the smoke checks against any OpenAI-compatible endpoint."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
