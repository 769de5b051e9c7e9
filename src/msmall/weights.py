"""Where a profile's weights come from and whether they are already here: the Hugging Face token,
the HF cache, Ollama's model store. Read-only lookups; nothing is downloaded here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from msmall import hardware
from msmall.models import get_model

if TYPE_CHECKING:
    from msmall.profiles import Profile


def hf_token_source() -> str | None:
    """Where a Hugging Face token is available (never the token itself)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return f"{var} is set"
    candidates = []
    if os.environ.get("HF_TOKEN_PATH"):
        candidates.append(Path(os.environ["HF_TOKEN_PATH"]).expanduser())
    hf_home = os.environ.get("HF_HOME")
    base = Path(hf_home).expanduser() if hf_home else Path.home() / ".cache" / "huggingface"
    candidates.append(base / "token")
    for path in candidates:
        try:
            if path.is_file() and path.read_text(encoding="utf-8").strip():
                return f"a token is stored in {path}"
        except OSError:
            continue
    return None


def model_cached(prof: Profile, engine: str) -> Path | None:
    """Where the profile's weights already are, if downloaded (at least partly)."""
    if engine == "ollama":
        name, _, tag = prof.model.ollama_tag.partition(":")
        if "/" not in name:
            name = f"library/{name}"
        path = (
            hardware.ollama_models_dir()
            / "manifests"
            / "registry.ollama.ai"
            / name
            / (tag or "latest")
        )
        return path if path.is_file() else None
    repo = prof.model.hf_repo
    path = hardware.hf_cache_dir() / ("models--" + repo.replace("/", "--")) / "snapshots"
    return path if path.is_dir() and any(path.iterdir()) else None


def is_gated(prof: Profile) -> bool:
    return get_model(prof.model.id).is_gated(prof.model.hf_repo)


def hf_token_warning(prof: Profile, engine: str) -> str | None:
    """For serve: a gated repo, no token, and no cached weights means a 401 after startup."""
    if engine != "vllm" or not is_gated(prof):
        return None
    if hf_token_source() is not None or model_cached(prof, engine) is not None:
        return None
    return (
        f"{prof.model.hf_repo} is gated on Hugging Face and no token was found (HF_TOKEN or "
        "`hf auth login`): the download will fail with 401. Accept the licence on the model's "
        "page and export HF_TOKEN."
    )
