"""Can this machine run Mistral Small 3.1, and with which profile? Checks, fits, a recommendation.

`run_doctor()` reads the hardware and the engines and returns a `DoctorReport` (no printing);
`msmall doctor` renders it. `preflight()` is the part of it that `msmall serve` runs before
anything loads: GPU count, the memory fit and the CUDA driver version of the chosen profile, and
`max_model_len: auto` resolved to the largest context that fits.

No GPU is a normal answer here, not an error: the GPU check says so and the simulator profile
still fits. Only a driver that is present but failing is "broken" without a named profile.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from msmall.errors import EngineUnavailable, EnvironmentProblem, MsmallError

if TYPE_CHECKING:
    from msmall.fit import FitReport
    from msmall.hardware import GpuInfo, Inventory
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

Status = Literal["ok", "warn", "fail", "skip"]

# `ollama --version` answers at once; a wedged install should not stall the doctor.
OLLAMA_VERSION_TIMEOUT_S = 10.0
# `vllm --version` imports torch (the metadata lookup comes first and is instant).
VLLM_VERSION_TIMEOUT_S = 30.0
# A TCP DOCKER_HOST that drops packets would hold docker-py for its 30 s client timeout.
DOCKER_CONNECT_TIMEOUT_S = 2.0
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
# Vision and tool calls for mistral-small3.1 need Ollama 0.6.5 (FACTS).
OLLAMA_MIN_VERSION = (0, 6, 5)
# More than this in use on a GPU is another process's memory (an idle card shows a few MiB; the
# driver's reserve is counted apart by nvidia-smi from R510 on).
GPU_BUSY_MIB = 1024
# Lowest Linux driver branch for each CUDA driver version (NVIDIA's CUDA toolkit release notes,
# table 3), for a fix that names the driver to install.
CUDA_MIN_DRIVER = {
    (11, 8): 520,
    (12, 0): 525,
    (12, 1): 530,
    (12, 2): 535,
    (12, 3): 545,
    (12, 4): 550,
    (12, 5): 555,
    (12, 6): 560,
    (12, 8): 570,
    (12, 9): 575,
    (13, 0): 580,
}
# Repos the hub only serves to accounts that accepted the licence (FACTS: the official one).
GATED_REPO_PREFIXES = ("mistralai/",)
DEMO_FIX = "msmall serve --profile demo runs the simulator (no GPU needed)."


class Reporter(Protocol):
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...


class _QuietReporter:
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...


# ---------------------------------------------------------------------------------------------
# The report


class Check(BaseModel):
    name: str
    status: Status
    detail: str
    fix: str | None = None


class ProfileFit(BaseModel):
    name: str
    backend: str
    fits: bool
    verdict: Literal["fits", "tight", "does_not_fit"]
    # Largest context that fits this machine's GPUs (0 if none), as the fit model computes it.
    max_context: int
    reason: str
    suggestion: str | None = None
    gpus_needed: int
    # The same check against the memory free right now, when another process holds some of it.
    verdict_now: Literal["fits", "tight", "does_not_fit"] | None = None
    max_context_now: int | None = None


class DoctorReport(BaseModel):
    profile: str | None = None
    gpu_source: str
    gpu_problem: str | None = None
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    ram_total_gib: float | None = None
    ram_available_gib: float | None = None
    disks: list[dict[str, Any]] = Field(default_factory=list)
    engines: dict[str, str | None] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    profiles: list[ProfileFit] = Field(default_factory=list)
    recommended_profile: str | None = None
    recommended_reason: str
    ok: bool
    exit_code: int

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value:,} MiB"


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        return None
    return tuple(int(p) for p in match.groups() if p is not None)


def _driver_major(driver: str | None) -> int | None:
    parts = _version_tuple(driver)
    return parts[0] if parts else None


def _driver_for_cuda(cuda: str) -> str:
    wanted = _version_tuple(cuda) or (0, 0)
    for version, branch in sorted(CUDA_MIN_DRIVER.items()):
        if version >= wanted[:2]:
            return f"R{branch}"
    return "a newer"


def cuda_problem(inv: Inventory, min_cuda: str | None) -> str | None:
    """Why the driver's CUDA version is below the profile's minimum; None when it is not (or unknown)."""
    have, need = _version_tuple(inv.cuda_version), _version_tuple(min_cuda)
    if have is None or need is None or have[:2] >= need[:2]:
        return None
    return (
        f"the NVIDIA driver {inv.driver_version or '?'} supports CUDA {inv.cuda_version}; "
        f"the profile needs CUDA {min_cuda} (driver {_driver_for_cuda(min_cuda or '')} or newer)"
    )


def _cuda_fix(min_cuda: str) -> str:
    return f"Update the NVIDIA driver to {_driver_for_cuda(min_cuda)} or newer and reboot."


def visible_gpus(gpus: Sequence[GpuInfo], selector: str | None) -> list[GpuInfo]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to a process, in its order.

    Only plain index or UUID lists are understood; anything else (MIG ids, an empty value) leaves
    the list as it is rather than guessing.
    """
    if not selector or not selector.strip():
        return list(gpus)
    chosen = []
    for item in (s.strip() for s in selector.split(",")):
        match = next(
            (
                g
                for g in gpus
                if (item.isdigit() and g.index == int(item))
                or (g.uuid and item.startswith("GPU-") and g.uuid.startswith(item))
            ),
            None,
        )
        if match is None:
            return list(gpus)
        chosen.append(match)
    return chosen


def _gpus_for_backend(
    inv: Inventory,
    backend: str,
    env: dict[str, str] | None = None,
    gpu_ids: list[str] | None = None,
) -> list:
    # A profile's gpu_ids choose the GPUs for every backend. Otherwise the docker backend hands
    # every GPU to the container (the host's CUDA_VISIBLE_DEVICES stays outside), and the process
    # backends inherit CUDA_VISIBLE_DEVICES (the plan's own env wins over the shell's).
    if gpu_ids:
        return visible_gpus(inv.gpus, ",".join(gpu_ids))
    if backend == "docker":
        return list(inv.gpus)
    selector = (env or {}).get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return visible_gpus(inv.gpus, selector)


def describe_gpus(gpus: Sequence[GpuInfo]) -> str:
    if not gpus:
        return "no GPU"
    names = {g.name for g in gpus}
    sizes = {g.memory_total_mib for g in gpus}
    if len(names) == 1 and len(sizes) == 1:
        size = next(iter(sizes))
        each = f" ({_mib(size)}{' each' if len(gpus) > 1 else ''})"
        return f"{len(gpus)}x {gpus[0].name}{each}" if len(gpus) > 1 else f"{gpus[0].name}{each}"
    return ", ".join(f"{g.name} ({_mib(g.memory_total_mib)})" for g in gpus)


def _totals(gpus: Sequence[GpuInfo]) -> list[int] | None:
    totals = [g.memory_total_mib for g in gpus]
    return None if any(t is None for t in totals) else [int(t) for t in totals if t is not None]


def _frees(gpus: Sequence[GpuInfo]) -> list[int] | None:
    frees = [g.memory_free_mib for g in gpus]
    return None if any(f is None for f in frees) else [int(f) for f in frees if f is not None]


def _gpus_needed(prof: Profile) -> int:
    return max(prof.hardware.gpu_count, prof.serving.tensor_parallel_size)


def _known_profiles() -> list[Profile]:
    from msmall.profiles import Profile, load_all

    return [p for p in load_all() if isinstance(p, Profile)]


# The driver is missing, or GPU detection is off: "no GPU", a normal answer.
_ABSENT_MARKERS = (
    "not on PATH",
    "not installed or not loaded",
    "no NVIDIA driver is installed",
    "found no NVIDIA GPU",
    "listed no GPU",
    "turned off",
    "is not installed",
)


def driver_broken(inv: Inventory) -> bool:
    """A driver that is there but failing (version mismatch, GPU off the bus, hung, no access)."""
    if inv.gpus or not inv.problem:
        return False
    parts = [p.strip() for p in inv.problem.split(";") if p.strip()]
    return any(not any(marker in part for marker in _ABSENT_MARKERS) for part in parts)


# ---------------------------------------------------------------------------------------------
# Recommendation


def _recommend(inv: Inventory, profiles: list[Profile]) -> tuple[str | None, str]:
    from msmall import fit

    if not inv.gpus:
        return None, f"no NVIDIA GPU found: {inv.problem or 'nvidia-smi lists none'}"
    gpus = _gpus_for_backend(inv, "vllm")
    totals = _totals(gpus)
    if not totals:
        return None, "the GPUs do not report their memory size, so nothing can be sized for them"
    name = fit.recommend(profiles, totals)
    where = describe_gpus(gpus)
    if name is None:
        return None, f"no profile fits {where}"
    prof = next(p for p in profiles if p.name == name)
    need = _gpus_needed(prof)
    report = fit.check_fit(prof, totals[:need])
    verdict = {"fits": "fits", "tight": "fits, tightly,"}.get(report.verdict, report.verdict)
    why = (
        f"it {verdict} {where}: {report.weights.upper()} weights, "
        f"{'vision, ' if prof.serving.vision else ''}up to {report.max_context:,} tokens of context"
    )
    problem = cuda_problem(inv, prof.hardware.min_cuda)
    if problem:
        why += f" (but {problem})"
    return name, why


def recommend_for_this_machine(inventory: Inventory | None = None) -> tuple[str | None, str]:
    """The best known profile for this machine's GPUs (by their total memory), and why.

    (None, "no NVIDIA GPU found: ...") where there is no GPU to size against.
    """
    from msmall.hardware import read_inventory

    inv = inventory if inventory is not None else read_inventory()
    return _recommend(inv, _known_profiles())


# ---------------------------------------------------------------------------------------------
# Preflight (msmall serve)


def _fit_report(
    prof: Profile, gpus: Sequence[GpuInfo], backend: str, use_free: bool
) -> FitReport | None:
    from msmall import fit

    totals = _totals(gpus)
    if totals is None:
        return None
    free = _frees(gpus) if use_free else None
    others = [p for p in _known_profiles() if p.name != prof.name]
    return fit.check_fit(prof, totals, backend, free, alternatives=others)


def _refuse_or_warn(
    problem: EnvironmentProblem, force: bool, reporter: Reporter, what: str
) -> None:
    if not force:
        raise problem
    reporter.warn(f"{problem.message} (--force: launching anyway; {what})")


def preflight(
    prof: Profile,
    plan: LaunchPlan,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    inventory: Inventory | None = None,
) -> Profile:
    """Refuse a launch this machine cannot hold, before anything loads.

    Checks, in order: enough GPUs for tensor parallel, the memory fit (against the memory free
    now), the CUDA driver version. Each refusal is an EnvironmentProblem (exit 3) naming the
    numbers and what to use instead; with ``force`` it becomes a warning. Returns the profile,
    with ``max_model_len: auto`` resolved to the largest context that fits (vLLM backends).
    """
    from msmall.hardware import read_inventory

    reporter = reporter or _QuietReporter()
    backend = plan.backend
    if backend == "simulator" or prof.hardware.gpu_count == 0:
        return prof
    inv = inventory if inventory is not None else read_inventory()
    gpus = _gpus_for_backend(inv, backend, plan.env, prof.hardware.gpu_ids)
    if not gpus:
        reporter.info(
            f"no GPU readable ({inv.problem or 'none listed'}): skipping the memory check"
        )
        return prof
    where = describe_gpus(gpus)

    tp = prof.serving.tensor_parallel_size
    if backend in ("vllm", "docker") and len(gpus) < tp:
        name, _ = _recommend(inv, _known_profiles())
        instead = f"Use --profile {name}, which fits this machine" if name else "Use fewer GPUs"
        _refuse_or_warn(
            EnvironmentProblem(
                f"profile {prof.name} runs tensor parallel {tp} and needs {tp} GPUs; "
                f"this machine has {len(gpus)} ({where})",
                f"{instead}, or --force to try anyway.",
            ),
            force,
            reporter,
            "vLLM will fail to start",
        )
        return prof

    report = _fit_report(prof, gpus, backend, use_free=True)
    resolved = prof
    if report is None:
        reporter.info(f"{where} report no memory size: skipping the memory check")
    elif report.verdict == "does_not_fit":
        fix = report.suggestion or "Run `msmall doctor` to see the profiles that fit."
        _refuse_or_warn(
            EnvironmentProblem(
                f"profile {prof.name} ({backend}) does not fit {where}: {report.reason}",
                f"{fix} Or --force to launch anyway.",
            ),
            force,
            reporter,
            "expect an out-of-memory failure",
        )
    else:
        text = f"memory check ({where}): {report.reason}"
        if report.verdict == "tight":
            reporter.warn(text + (f" {report.suggestion}" if report.suggestion else ""))
        else:
            reporter.info(text)
        if prof.serving.max_model_len == "auto" and backend in ("vllm", "docker"):
            resolved = prof.model_copy(deep=True)
            # validate_assignment: the number goes through the same checks as a YAML value.
            resolved.serving.max_model_len = report.max_context
            reporter.info(
                f"max_model_len auto -> {report.max_context:,} tokens, the largest context "
                f"that fits {where}"
            )

    problem = cuda_problem(inv, prof.hardware.min_cuda)
    if problem and prof.hardware.min_cuda:
        _refuse_or_warn(
            EnvironmentProblem(
                f"profile {prof.name}: {problem}",
                f"{_cuda_fix(prof.hardware.min_cuda)} Or --force to try anyway.",
            ),
            force,
            reporter,
            "CUDA may refuse to start (error 803/804)",
        )

    if backend == "docker":
        warning = _docker_image_warning(plan.image, inv.driver_version)
        if warning:
            reporter.warn(warning)
    return resolved


def _docker_image_warning(image: str | None, driver: str | None) -> str | None:
    from msmall import engines

    major = _driver_major(driver)
    if not image or major is None or major >= engines.CUDA13_MIN_DRIVER:
        return None
    tag = image.rpartition(":")[2]
    if tag.endswith("-cu129") or not _version_tuple(tag):
        return None
    if not engines.at_least(tag, engines.VLLM_CUDA13_IMAGES_FROM):
        return None
    return (
        f"{image} is a CUDA 13 image, which needs an R{engines.CUDA13_MIN_DRIVER}+ driver; this "
        f"machine has {driver}: use {image}-cu129 or update the driver"
    )


# ---------------------------------------------------------------------------------------------
# Individual checks


class _Checks:
    """Builds the check list. ``strict``: a profile was named, so what stops it is a fail."""

    def __init__(self, target: Profile | None, strict: bool, backend: str | None) -> None:
        self.target = target
        self.strict = strict
        self.backend = backend or (target.backend if target else None)
        self.items: list[Check] = []

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.items.append(Check(name=name, status=status, detail=detail, fix=fix))

    def bad(self) -> Status:
        return "fail" if self.strict else "warn"

    @property
    def label(self) -> str:
        if self.target is None:
            return ""
        return ("profile " if self.strict else "recommended profile ") + self.target.name


def _check_gpus(c: _Checks, inv: Inventory) -> None:
    needs_gpu = c.target is not None and c.target.hardware.gpu_count > 0 and c.strict
    if inv.gpus:
        c.add(
            "gpu",
            "ok",
            f"{describe_gpus(inv.gpus)}; driver {inv.driver_version or '?'} (read via {inv.source})",
        )
    elif driver_broken(inv):
        c.add(
            "gpu",
            "fail",
            f"the NVIDIA driver is there but failing: {inv.problem}",
            "Reboot after a driver update; check `nvidia-smi` and `dmesg | grep -i nvrm`.",
        )
    else:
        c.add(
            "gpu",
            "fail" if needs_gpu else "warn",
            f"no NVIDIA GPU found: {inv.problem or 'none listed'}",
            "Install the NVIDIA driver (`nvidia-smi` should list your GPUs); or " + DEMO_FIX,
        )


def _check_cuda(c: _Checks, inv: Inventory) -> None:
    if not inv.gpus:
        c.add("cuda", "skip", "no GPU, no CUDA driver to check")
        return
    if not inv.cuda_version:
        c.add(
            "cuda",
            "warn",
            f"the driver {inv.driver_version or '?'} did not report its CUDA version",
            "Run `nvidia-smi`: the header shows the CUDA version the driver supports.",
        )
        return
    have = f"CUDA {inv.cuda_version} (driver {inv.driver_version or '?'})"
    min_cuda = c.target.hardware.min_cuda if c.target else None
    if c.target is None or not min_cuda:
        c.add("cuda", "ok", have)
        return
    problem = cuda_problem(inv, min_cuda)
    if problem:
        c.add("cuda", c.bad(), f"{have}; {c.label} needs CUDA {min_cuda}", _cuda_fix(min_cuda))
    else:
        c.add("cuda", "ok", f"{have}; {c.label} needs CUDA {min_cuda}")


def _check_gpu_memory(c: _Checks, inv: Inventory) -> None:
    if not inv.gpus:
        c.add("gpu-memory", "skip", "no GPU")
        return
    busy = []
    parts = []
    for g in inv.gpus:
        parts.append(f"GPU {g.index}: {_mib(g.memory_total_mib)}, {_mib(g.memory_free_mib)} free")
        if g.memory_total_mib is None or g.memory_free_mib is None:
            continue
        in_use = g.memory_used_mib
        if in_use is None:
            in_use = g.memory_total_mib - g.memory_free_mib
        if in_use > GPU_BUSY_MIB:
            busy.append(
                f"GPU {g.index} has {_mib(in_use)} in use by other processes "
                f"({_mib(g.memory_free_mib)} free of {_mib(g.memory_total_mib)})"
            )
    small = []
    if c.target is not None and c.target.hardware.min_vram_gib:
        want = c.target.hardware.min_vram_gib
        gpus = inv.gpus[: max(_gpus_needed(c.target), 1)]
        small = [
            f"GPU {g.index} has {g.memory_total_mib / 1024:.1f} GiB, {c.label} wants {want:g} GiB"
            for g in gpus
            if g.memory_total_mib is not None and g.memory_total_mib / 1024 < want
        ]
    if busy:
        c.add(
            "gpu-memory",
            "warn",
            "; ".join(busy),
            "Stop the other processes on the GPU (`nvidia-smi` lists them), or lower "
            "--set gpu_memory_utilization.",
        )
    elif small:
        c.add(
            "gpu-memory",
            "warn",
            "; ".join(small),
            "The memory-fit check decides; `msmall doctor` lists the profiles that fit.",
        )
    else:
        c.add("gpu-memory", "ok", "; ".join(parts))


def _check_gpu_count(c: _Checks, inv: Inventory) -> None:
    if c.target is None or c.target.hardware.gpu_count == 0:
        return
    need = _gpus_needed(c.target)
    have = len(
        _gpus_for_backend(inv, c.backend or c.target.backend, None, c.target.hardware.gpu_ids)
    )
    if have >= need:
        c.add("gpu-count", "ok", f"{c.label} needs {need} GPU(s); {have} found")
        return
    tp = c.target.serving.tensor_parallel_size
    hard = c.backend in ("vllm", "docker") and have < tp
    c.add(
        "gpu-count",
        c.bad() if hard or have == 0 else "warn",
        f"{c.label} needs {need} GPU(s)"
        + (f" (tensor parallel {tp})" if tp > 1 else "")
        + f"; {have} found",
        "Pick a profile made for this many GPUs (see the table below).",
    )


def _check_ram(c: _Checks, inv: Inventory) -> None:
    if inv.ram_total_gib is None:
        c.add("ram", "skip", "could not read the memory size")
        return
    have = f"{inv.ram_total_gib:.1f} GiB RAM, {inv.ram_available_gib or 0:.1f} GiB available"
    want = c.target.hardware.min_ram_gib if c.target else 0
    if want and inv.ram_total_gib < want:
        c.add(
            "ram",
            "warn",
            f"{have}; {c.label} wants {want:g} GiB",
            "Loading may swap or be killed: close other programs or add swap.",
        )
    else:
        c.add("ram", "ok", have + (f"; {c.label} wants {want:g} GiB" if want else ""))


def _model_cached(prof: Profile, backend: str) -> Path | None:
    """Where the profile's weights already are, if downloaded (at least partly)."""
    from msmall import hardware

    if backend == "ollama":
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


def _check_disk(c: _Checks, inv: Inventory) -> None:
    by_purpose = {d.purpose: d for d in inv.disks}
    if c.target is None or c.target.hardware.gpu_count == 0:
        text = "; ".join(
            f"{d.purpose} {d.path}: {'?' if d.free_gib is None else f'{d.free_gib:.1f} GiB'} free"
            for d in inv.disks
        )
        c.add("disk", "ok" if text else "skip", text or "no download locations known")
        return
    backend = c.backend or c.target.backend
    disk = by_purpose.get("ollama-models" if backend == "ollama" else "huggingface-cache")
    if disk is None:
        c.add("disk", "skip", "download location unknown")
        return
    cached = _model_cached(c.target, backend)
    free = "?" if disk.free_gib is None else f"{disk.free_gib:.1f} GiB"
    want = c.target.hardware.min_disk_gib
    if cached is not None:
        c.add("disk", "ok", f"the weights are already in {cached.parent} ({free} free)")
    elif disk.free_gib is not None and want and disk.free_gib < want:
        c.add(
            "disk",
            c.bad(),
            f"{free} free at {disk.path}; {c.label} downloads about {want:g} GiB",
            "Free some space, or point "
            + ("OLLAMA_MODELS" if backend == "ollama" else "HF_HOME (or HF_HUB_CACHE)")
            + " at a bigger disk.",
        )
    else:
        c.add(
            "disk",
            "ok",
            f"{free} free at {disk.path}" + (f"; {c.label} needs {want:g} GiB" if want else ""),
        )


def ollama_version(timeout_s: float = OLLAMA_VERSION_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(version, problem) of the ollama on PATH; (None, None) when there is none."""
    exe = shutil.which("ollama")
    if exe is None:
        return None, None
    try:
        done = subprocess.run(
            [exe, "--version"],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"`ollama --version` did not answer within {timeout_s:g} s"
    except OSError as exc:
        return None, f"`ollama --version` could not run: {exc}"
    # "ollama version is 0.6.5"; with no server running it warns first and ends with
    # "Warning: client version is 0.6.5".
    found = re.findall(r"version is v?(\d+\.\d+(?:\.\d+)?)", done.stdout + done.stderr)
    if found:
        return found[-1], None
    if done.returncode != 0:
        return None, f"`ollama --version` exited with code {done.returncode}"
    return None, "`ollama --version` printed no version"


def _check_ollama(c: _Checks, version: str | None, problem: str | None) -> None:
    named = c.strict and c.backend == "ollama"
    if version is None:
        c.add(
            "ollama",
            "fail" if named else "warn",
            problem or "not installed (ollama is not on PATH)",
            "Install Ollama from ollama.com (needed only for the ollama backend).",
        )
        return
    if (_version_tuple(version) or (0,)) < OLLAMA_MIN_VERSION:
        c.add(
            "ollama",
            "fail" if named else "warn",
            f"ollama {version}: mistral-small3.1 needs 0.6.5 or newer for vision and tools",
            "Update Ollama.",
        )
        return
    c.add("ollama", "ok", f"ollama {version}")


def _check_vllm(c: _Checks, version: str | None) -> None:
    from msmall import engines

    named = c.strict and c.backend == "vllm"
    if version is None:
        c.add(
            "vllm",
            "fail" if named else "warn",
            "not installed (no vllm package or executable)",
            "pip install vllm, or use --backend docker (the vllm/vllm-openai image).",
        )
        return
    try:
        old = not engines.at_least(version, engines.VLLM_MIN_FOR_MODEL)
    except MsmallError:
        old = False
    if old:
        c.add(
            "vllm",
            "fail" if named else "warn",
            f"vllm {version} cannot serve Mistral Small 3.1 (support arrived in "
            f"{engines.VLLM_MIN_FOR_MODEL})",
            "pip install -U vllm",
        )
        return
    c.add("vllm", "ok", f"vllm {version}")


def _docker_unreachable_fast() -> str | None:
    """Why the Docker daemon certainly cannot be reached, decided without waiting; else None."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    if not host:
        if not os.path.exists(DEFAULT_DOCKER_SOCKET):
            return (
                f"no Docker daemon: DOCKER_HOST is unset and {DEFAULT_DOCKER_SOCKET} does not exist"
            )
        return None
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not os.path.exists(path):
            return f"no Docker daemon: DOCKER_HOST={host} and {path} does not exist"
        return None
    if host.startswith(("tcp://", "http://", "https://")):
        parts = urlsplit(host.replace("tcp://", "http://", 1))
        port = parts.port or (2376 if os.environ.get("DOCKER_TLS_VERIFY") else 2375)
        try:
            with socket.create_connection(
                (parts.hostname or "127.0.0.1", port), timeout=DOCKER_CONNECT_TIMEOUT_S
            ):
                return None
        except OSError as exc:
            return f"no Docker daemon answers at DOCKER_HOST={host} ({exc.strerror or exc})"
    return None


class DockerStatus(BaseModel):
    version: str | None = None  # the daemon's ServerVersion, when reachable
    gpu_problem: str | None = None  # what `docker info` lacks for GPUs (no NVIDIA runtime)
    unreachable: str | None = None  # why the daemon cannot be used
    fix: str | None = None


def docker_status() -> DockerStatus:
    """Is a Docker daemon reachable, and can it hand GPUs to containers? Never hangs for long."""
    quick = _docker_unreachable_fast()
    if quick:
        return DockerStatus(
            unreachable=quick,
            fix="Start Docker, or set DOCKER_HOST (needed only for --backend docker).",
        )
    try:
        from msmall import docker_runtime

        cli = docker_runtime.client()
    except EngineUnavailable as exc:
        return DockerStatus(unreachable=exc.message, fix=exc.fix)
    except ImportError:
        return DockerStatus(
            unreachable="the docker Python SDK is not installed", fix="pip install docker"
        )
    try:
        info = cli.info()
    except Exception as exc:  # any SDK or transport error: the daemon is not usable
        return DockerStatus(unreachable=f"the Docker daemon did not answer `docker info`: {exc}")
    finally:
        cli.close()
    return DockerStatus(
        version=str(info.get("ServerVersion") or "?"),
        gpu_problem=docker_runtime.gpu_runtime_problem(info),
    )


def _check_docker(c: _Checks, inv: Inventory, status: DockerStatus) -> None:
    from msmall import docker_runtime, engines

    unreachable, runtime_problem = status.unreachable, status.gpu_problem
    named = c.strict and c.backend == "docker"
    if unreachable:
        c.add("docker", "fail" if named else "warn", unreachable, status.fix)
    else:
        c.add("docker", "ok", f"Docker {status.version} reachable")
        if runtime_problem:
            c.add(
                "docker-gpu",
                "fail" if named else "warn",
                runtime_problem,
                docker_runtime.TOOLKIT_FIX,
            )
        else:
            c.add("docker-gpu", "ok", "an NVIDIA runtime (or CDI) is registered with Docker")
    major = _driver_major(inv.driver_version)
    if major is None or (unreachable and not named):
        return
    if major >= engines.CUDA13_MIN_DRIVER:
        c.add(
            "docker-cuda13",
            "ok",
            f"driver {inv.driver_version} runs the CUDA 13 vllm/vllm-openai images (R580+)",
        )
    else:
        tag = engines.docker_image_tag(engines.VLLM_LATEST, major)
        c.add(
            "docker-cuda13",
            "warn",
            f"driver {inv.driver_version} is older than R{engines.CUDA13_MIN_DRIVER}: the default "
            f"vllm/vllm-openai images (v{engines.VLLM_CUDA13_IMAGES_FROM}+) are CUDA 13 and fail "
            "with CUDA error 803",
            f"Use the -cu129 tag (vllm/vllm-openai:{tag}), or update the driver to R580+.",
        )


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


def hf_token_warning(prof: Profile, backend: str) -> str | None:
    """For serve: a gated repo, no token, and no cached weights means a 401 after startup."""
    if backend not in ("vllm", "docker") or not prof.model.hf_repo.startswith(GATED_REPO_PREFIXES):
        return None
    if hf_token_source() is not None or _model_cached(prof, backend) is not None:
        return None
    return (
        f"{prof.model.hf_repo} is gated on Hugging Face and no token was found (HF_TOKEN or "
        "`hf auth login`): the download will fail with 401. Accept the licence on the model's "
        "page and export HF_TOKEN."
    )


def _check_hf_token(c: _Checks) -> None:
    source = hf_token_source()
    backend = c.backend or (c.target.backend if c.target else None)
    gated = (
        c.target is not None
        and backend in ("vllm", "docker")
        and c.target.model.hf_repo.startswith(GATED_REPO_PREFIXES)
    )
    if source:
        c.add("hf-token", "ok", f"Hugging Face token present ({source}; value not shown)")
        return
    fix = (
        "Accept the licence on the model's Hugging Face page, then export HF_TOKEN "
        "(a read token from huggingface.co/settings/tokens)."
    )
    if gated and c.target is not None:
        repo = c.target.model.hf_repo
        if _model_cached(c.target, backend or "vllm") is not None:
            c.add("hf-token", "ok", f"no HF_TOKEN, but {repo} is already downloaded")
            return
        c.add("hf-token", c.bad(), f"no HF_TOKEN: {repo} is gated and needs one", fix)
    elif c.target is not None:
        c.add(
            "hf-token",
            "ok",
            f"no HF_TOKEN; not needed for {c.label} ({backend}, "
            f"{c.target.model.ollama_tag if backend == 'ollama' else c.target.model.hf_repo})",
        )
    else:
        c.add(
            "hf-token",
            "warn",
            "no HF_TOKEN: the official mistralai repo (BF16 profiles) is gated and needs one",
            fix,
        )


def _check_port(c: _Checks) -> None:
    from msmall.supervisor import port_in_use

    if c.target is None:
        return
    backend = c.backend or c.target.backend
    host, port = c.target.serving.host, c.target.port_for(backend)
    try:
        busy = port_in_use(host, port)
    except OSError as exc:
        c.add("port", c.bad(), f"cannot bind {host}:{port}: {exc}", "Check serving.host.")
        return
    if not busy:
        c.add("port", "ok", f"{host}:{port} is free for {c.label}")
    elif backend == "ollama":
        c.add(
            "port",
            "warn",
            f"{host}:{port} is in use: msmall reuses an Ollama daemon there (with its own settings)",
            "Stop it (`systemctl stop ollama`) to let msmall run Ollama with the profile's settings.",
        )
    else:
        c.add(
            "port",
            c.bad(),
            f"{host}:{port} is already in use",
            f"Stop what runs there (`msmall ps`), or serve with --port {port + 1}.",
        )


# ---------------------------------------------------------------------------------------------
# Profiles against this machine


def _profile_fit(prof: Profile, inv: Inventory, backend: str | None = None) -> ProfileFit:
    from msmall import fit

    backend = backend or prof.backend
    need = _gpus_needed(prof)
    if backend == "simulator" or prof.hardware.gpu_count == 0:
        report = fit.check_fit(prof, [], "simulator")
        return ProfileFit(
            name=prof.name,
            backend=backend,
            fits=True,
            verdict="fits",
            max_context=report.max_context,
            reason=report.reason,
            gpus_needed=0,
        )
    gpus = _gpus_for_backend(inv, backend, None, prof.hardware.gpu_ids)
    machine = _fit_report(prof, gpus, backend, use_free=False) if gpus else None
    if machine is None:
        return ProfileFit(
            name=prof.name,
            backend=backend,
            fits=False,
            verdict="does_not_fit",
            max_context=0,
            reason="The GPUs do not report their memory size." if gpus else "No NVIDIA GPU found.",
            gpus_needed=need,
        )
    row = ProfileFit(
        name=prof.name,
        backend=backend,
        fits=machine.verdict != "does_not_fit",
        verdict=machine.verdict,
        max_context=machine.max_context,
        reason=machine.reason,
        suggestion=machine.suggestion,
        gpus_needed=need,
    )
    now = _fit_report(prof, gpus, backend, use_free=True) if _frees(gpus) else None
    if now is not None and (
        now.verdict != machine.verdict or now.max_context != machine.max_context
    ):
        row.verdict_now = now.verdict
        row.max_context_now = now.max_context
    return row


def _check_fit_now(c: _Checks, inv: Inventory, row: ProfileFit) -> None:
    """The named profile against the memory free right now: what `msmall serve` would decide."""
    if c.target is None or row.gpus_needed == 0:
        return
    backend = c.backend or c.target.backend
    gpus = _gpus_for_backend(inv, backend, None, c.target.hardware.gpu_ids)
    if not gpus:
        c.add("memory-fit", c.bad(), f"{c.label}: no GPU to load it on", DEMO_FIX)
        return
    report = _fit_report(c.target, gpus, backend, use_free=True)
    if report is None:
        c.add("memory-fit", "warn", "the GPUs do not report their memory size")
        return
    status: Status = "ok" if report.verdict == "fits" else "warn"
    if report.verdict == "does_not_fit":
        status = c.bad()
    c.add("memory-fit", status, f"{c.label} ({backend}): {report.reason}", report.suggestion)


# ---------------------------------------------------------------------------------------------
# The doctor


def run_doctor(
    profile: str | None = None,
    *,
    backend: str | None = None,
    overrides: list[str] | None = None,
    inventory: Inventory | None = None,
) -> DoctorReport:
    """Every check, every profile against this machine, and the recommended profile.

    ``profile``: the one the user means to run; what stops it is a fail and makes exit_code 3.
    Without it the checks are held against the recommended profile and only a broken driver
    fails. Raises ConfigError for an unknown profile or a bad override.
    """
    from msmall import engines
    from msmall.hardware import read_inventory
    from msmall.profiles import BACKENDS, load_profile, parse_set

    if backend is not None and backend not in BACKENDS:
        from msmall.errors import ConfigError

        raise ConfigError(f"unknown backend '{backend}'", f"Choose one of: {', '.join(BACKENDS)}")
    named = load_profile(profile, parse_set(overrides)) if profile else None
    inv = inventory if inventory is not None else read_inventory()
    known = _known_profiles()
    recommended, why = _recommend(inv, known)

    target = named
    if target is None and recommended:
        target = next(p for p in known if p.name == recommended)
    c = _Checks(target, strict=named is not None, backend=backend if named else None)

    _check_gpus(c, inv)
    _check_cuda(c, inv)
    _check_gpu_memory(c, inv)
    _check_gpu_count(c, inv)
    _check_ram(c, inv)
    _check_disk(c, inv)
    ollama, ollama_problem = ollama_version()
    _check_ollama(c, ollama, ollama_problem)
    vllm = engines.installed_vllm_version(timeout_s=VLLM_VERSION_TIMEOUT_S)
    _check_vllm(c, vllm)
    docker = docker_status()
    _check_docker(c, inv, docker)
    _check_hf_token(c)
    _check_port(c)

    rows = [_profile_fit(p, inv) for p in known]
    named_row = None
    if named is not None:
        # The named profile as asked for (with --set / --backend), in place of the plain one.
        named_row = _profile_fit(named, inv, c.backend)
        rows = sorted([r for r in rows if r.name != named.name] + [named_row], key=lambda r: r.name)
    if target is not None:
        _check_fit_now(c, inv, named_row or next(r for r in rows if r.name == target.name))

    broken = any(ch.status == "fail" for ch in c.items)
    blocked = named_row is not None and named_row.verdict == "does_not_fit"
    exit_code = EnvironmentProblem.exit_code if broken or blocked else 0
    return DoctorReport(
        profile=named.name if named else None,
        gpu_source=inv.source,
        gpu_problem=inv.problem,
        gpus=[g.to_dict() for g in inv.gpus],
        driver_version=inv.driver_version,
        cuda_version=inv.cuda_version,
        ram_total_gib=inv.ram_total_gib,
        ram_available_gib=inv.ram_available_gib,
        disks=[d.to_dict() for d in inv.disks],
        engines={"ollama": ollama, "vllm": vllm, "docker": docker.version},
        checks=c.items,
        profiles=rows,
        recommended_profile=recommended,
        recommended_reason=why,
        ok=exit_code == 0,
        exit_code=exit_code,
    )
