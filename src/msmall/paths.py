"""Where msmall keeps user profiles, deployment records and logs.

``MSMALL_CONFIG_DIR`` and ``MSMALL_STATE_DIR`` override the platform defaults (tests and CI use
them to isolate the user's world).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "msmall"


def _override(var: str) -> Path | None:
    """An override made absolute once: a relative one would move with the working directory,
    and a detached server's record must be found again from anywhere."""
    value = os.environ.get(var, "").strip()
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def config_dir() -> Path:
    override = _override("MSMALL_CONFIG_DIR")
    if override:
        return override
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def state_dir() -> Path:
    override = _override("MSMALL_STATE_DIR")
    if override:
        return override
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


def ensure_private_dir(path: Path) -> Path:
    """Make a directory (and parents) for msmall's state, 0700: logs hold engine output that may
    include tokens. A path that is a file, a dangling symlink or unwritable is a plain error."""
    from msmall.errors import EnvironmentProblem

    try:
        if path.is_symlink() and not path.exists():
            raise EnvironmentProblem(
                f"{path} is a symlink to nothing",
                "Remove it, or point MSMALL_STATE_DIR at a directory.",
            )
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.is_dir():
            raise FileExistsError
        st = path.stat()
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            path.chmod(0o700)
    except EnvironmentProblem:
        raise
    except FileExistsError:
        raise EnvironmentProblem(
            f"{path} is not a directory",
            "Move that file away, or point MSMALL_STATE_DIR at a directory.",
        ) from None
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot use {path}: {exc.strerror or exc}",
            "Point MSMALL_STATE_DIR at a writable directory.",
        ) from None
    return path


def check_readable_dir(path: Path) -> None:
    """For readers (ps, stop, logs): a state dir that is a file or a dangling symlink is a plain
    error, not "nothing recorded"."""
    from msmall.errors import EnvironmentProblem

    if path.is_symlink() and not path.exists():
        raise EnvironmentProblem(
            f"{path} is a symlink to nothing", "Remove it, or point MSMALL_STATE_DIR elsewhere."
        )
    if path.exists() and not path.is_dir():
        raise EnvironmentProblem(
            f"{path} is not a directory",
            "Move that file away, or point MSMALL_STATE_DIR at a directory.",
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file.
    The file is 0600 (records name logs and ports; nobody else needs them). A full or read-only
    disk is a plain error, and no temp file is left behind."""
    from msmall.errors import EnvironmentProblem

    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot write {path}: {exc.strerror or exc}",
            "Free some disk space, or point MSMALL_STATE_DIR at a writable directory.",
        ) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
