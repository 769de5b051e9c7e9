"""What each engine version accepts, so msmall never emits a flag the installed engine rejects.

Sources: shared/FACTS.md (checked against vLLM 0.33.0 and its changelog) and vLLM's argparse
(`vllm/engine/arg_utils.py`, `vllm/entrypoints/openai/cli_args.py`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from msmall.errors import ConfigError

if TYPE_CHECKING:
    from msmall.models import ModelSpec

# The newest vLLM msmall knows; used when neither --vllm-version nor an installed vllm says otherwise.
VLLM_LATEST = "0.33.0"
# --limit-mm-per-prompt: 'image=N' worked up to 0.9.x and fails from 0.10.0 on, which wants JSON.
VLLM_LIMIT_MM_JSON_FROM = "0.10.0"
# --max-model-len auto/-1 (largest context that fits) is known good in 0.33; older versions get a number.
VLLM_MAX_LEN_AUTO_FROM = "0.33.0"
# Default images from v0.20 on are built for CUDA 13 and need an R580+ host driver.
VLLM_CUDA13_IMAGES_FROM = "0.20.0"
CUDA13_MIN_DRIVER = 580

# Flags that a vLLM version removed: flag -> (removed in, what to use instead).
VLLM_REMOVED_FLAGS: dict[str, tuple[str, str]] = {
    "--disable-mm-preprocessor-cache": ("0.33.0", "--mm-processor-cache-gb 0"),
}


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.10.1.post1' -> (0, 10, 1); 'v0.33.0' -> (0, 33, 0)."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise ConfigError(
            f"'{text}' is not a vLLM version", "Use a release number such as --vllm-version 0.33.0"
        )
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def at_least(version: str, floor: str) -> bool:
    return parse_version(version) >= parse_version(floor)


def normalize_version(text: str) -> str:
    return ".".join(map(str, parse_version(text)))


def check_vllm_version(version: str, model: ModelSpec) -> str:
    version = normalize_version(version)
    if not at_least(version, model.vllm_min_version):
        raise ConfigError(
            f"vLLM {version} cannot serve {model.display_name} (support arrived in "
            f"{model.vllm_min_version})",
            f"Upgrade vLLM, or generate for a newer one with --vllm-version {VLLM_LATEST}",
        )
    return version


def limit_mm_per_prompt(version: str, images: int) -> str:
    if at_least(version, VLLM_LIMIT_MM_JSON_FROM):
        return f'{{"image":{images}}}'
    return f"image={images}"


def check_extra_args(args: list[str], version: str) -> None:
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        flag = flag.replace("_", "-")
        removed = VLLM_REMOVED_FLAGS.get(flag)
        if removed and at_least(version, removed[0]):
            raise ConfigError(
                f"{flag} was removed in vLLM {removed[0]} (target: {version})",
                f"Use {removed[1]} instead.",
            )
        if flag == "--limit-mm-per-prompt" and at_least(version, VLLM_LIMIT_MM_JSON_FROM):
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
            # The old 'image=N' spelling is rejected from 0.10.0 on.
            if re.fullmatch(r"\s*\w+=\d+(\s*,\s*\w+=\d+)*\s*", value):
                raise ConfigError(
                    f"--limit-mm-per-prompt {value} is the pre-0.10 format, rejected by vLLM "
                    f"{VLLM_LIMIT_MM_JSON_FROM}+ (target: {version})",
                    "Use JSON, e.g. '{\"image\":4}', or drop it: msmall sets it from "
                    "serving.images_per_prompt.",
                )


def docker_image_tag(version: str, driver_major: int | None = None) -> str:
    """vllm/vllm-openai tag for a vLLM version; the -cu129 build for drivers older than R580."""
    tag = f"v{normalize_version(version)}"
    if (
        driver_major is not None
        and driver_major < CUDA13_MIN_DRIVER
        and at_least(version, VLLM_CUDA13_IMAGES_FROM)
    ):
        tag += "-cu129"
    return tag


def installed_vllm_version(timeout_s: float = 60.0) -> str | None:
    """The vllm on PATH, if any. `vllm --version` imports torch, hence the generous timeout.

    The package metadata of this interpreter answers instantly, but only for the `vllm` that
    msmall will really start: the one on PATH may belong to another environment.
    """
    import sys
    from importlib import metadata

    from msmall import procs

    exe = shutil.which("vllm")
    if exe is None:
        return None
    if Path(exe).resolve().parent == (Path(sys.prefix) / "bin").resolve():
        try:
            return metadata.version("vllm")
        except metadata.PackageNotFoundError:
            pass
    try:
        out = procs.run([exe, "--version"], timeout_s=timeout_s)
    except procs.ToolMissing:
        return None
    except procs.ToolFailed:
        return None
    # Importing vllm may log INFO lines to stdout first: prefer a line that is only a version.
    text = out.stdout
    match = re.search(r"^\s*v?(\d+\.\d+(?:\.\d+)?)\S*\s*$", text, re.MULTILINE) or re.search(
        r"(\d+\.\d+(?:\.\d+)?)", text
    )
    return match.group(1) if match else None
