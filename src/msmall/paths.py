"""Where msmall keeps user profiles, deployment records and logs.

``MSMALL_CONFIG_DIR`` and ``MSMALL_STATE_DIR`` override the platform defaults (tests and CI use
them to isolate the user's world).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "msmall"


def config_dir() -> Path:
    override = os.environ.get("MSMALL_CONFIG_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def state_dir() -> Path:
    override = os.environ.get("MSMALL_STATE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


def user_profiles_dir() -> Path:
    return config_dir() / "profiles"


def builtin_profiles_dir() -> Path:
    return Path(__file__).parent / "profiles"


def logs_dir() -> Path:
    return state_dir() / "logs"


def deployments_dir() -> Path:
    return state_dir() / "deployments"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
