"""Can this machine run the model, and with which profile? Checks, fits, a recommendation.

`run_doctor()` reads the hardware and the engines once and returns a `DoctorReport` (no
printing); `msmall doctor` renders it. The memory fit, the CUDA rules and the recommendation are
the preflight's (msmall.preflight), the weights lookups are msmall.weights, and each engine's
version probe comes from the registry: doctor holds the checks and the report.

No GPU is a normal answer here, not an error: the GPU check says so and the simulator profile
still fits. Only a driver that is present but failing is "broken" without a named profile.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from msmall import backends, hardware, preflight
from msmall.errors import ConfigError, EngineUnavailable, EnvironmentProblem, MsmallError
from msmall.models import get_model
from msmall.weights import hf_token_source, is_gated, model_cached

if TYPE_CHECKING:
    from msmall.hardware import Inventory
    from msmall.profiles import Profile

Status = Literal["ok", "warn", "fail", "skip"]

# A TCP DOCKER_HOST that drops packets would hold docker-py for its 30 s client timeout.
DOCKER_CONNECT_TIMEOUT_S = 2.0
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
# More than this in use on a GPU is another process's memory (an idle card shows a few MiB; the
# driver's reserve is counted apart by nvidia-smi from R510 on).
GPU_BUSY_MIB = 1024
DEMO_FIX = "msmall serve --profile demo runs the simulator (no GPU needed)."


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
# Individual checks


class _Checks:
    """Builds the check list. ``strict``: a profile was named, so what stops it is a fail."""

    def __init__(self, target: Profile | None, strict: bool, backend: str | None) -> None:
        self.target = target
        self.strict = strict
        self.backend = backend or (target.backend if target else None)
        # What the backend means: the engine (its rules) and where it runs.
        self.engine, self.runtime = (
            backends.resolve(self.backend) if self.backend else (None, "process")
        )
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
            f"{hardware.describe_gpus(inv.gpus)}; driver {inv.driver_version or '?'} (read via {inv.source})",
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
    problem = preflight.cuda_problem(inv, min_cuda)
    if problem:
        c.add(
            "cuda",
            c.bad(),
            f"{have}; {c.label} needs CUDA {min_cuda}",
            preflight.cuda_fix(min_cuda),
        )
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
        gpus = inv.gpus[: max(preflight.gpus_needed(c.target), 1)]
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
    need = preflight.gpus_needed(c.target)
    have = len(hardware.gpus_for(inv, c.runtime, None, c.target.hardware.gpu_ids))
    if have >= need:
        c.add("gpu-count", "ok", f"{c.label} needs {need} GPU(s); {have} found")
        return
    tp = c.target.serving.tensor_parallel_size
    hard = c.engine is not None and c.engine.tensor_parallel and have < tp
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


def _check_disk(c: _Checks, inv: Inventory) -> None:
    by_purpose = {d.purpose: d for d in inv.disks}
    if c.target is None or c.target.hardware.gpu_count == 0:
        text = "; ".join(
            f"{d.purpose} {d.path}: {'?' if d.free_gib is None else f'{d.free_gib:.1f} GiB'} free"
            for d in inv.disks
        )
        c.add("disk", "ok" if text else "skip", text or "no download locations known")
        return
    ollama = c.engine is not None and c.engine.name == "ollama"
    disk = by_purpose.get("ollama-models" if ollama else "huggingface-cache")
    if disk is None:
        c.add("disk", "skip", "download location unknown")
        return
    cached = model_cached(c.target, c.engine.name if c.engine else "vllm")
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
            + ("OLLAMA_MODELS" if ollama else "HF_HOME (or HF_HUB_CACHE)")
            + " at a bigger disk.",
        )
    else:
        c.add(
            "disk",
            "ok",
            f"{free} free at {disk.path}" + (f"; {c.label} needs {want:g} GiB" if want else ""),
        )


def _target_model(c: _Checks):
    return get_model(c.target.model.id if c.target else "mistral-small-3.1")


def _check_ollama(c: _Checks, version: str | None, problem: str | None) -> None:
    named = c.strict and c.backend == "ollama"
    spec = _target_model(c)
    if version is None:
        c.add(
            "ollama",
            "fail" if named else "warn",
            problem or "not installed (ollama is not on PATH)",
            "Install Ollama from ollama.com (needed only for the ollama backend).",
        )
        return
    if (preflight.version_tuple(version) or (0,)) < spec.ollama_min_version:
        need = ".".join(map(str, spec.ollama_min_version))
        c.add(
            "ollama",
            "fail" if named else "warn",
            f"ollama {version}: {spec.default_ollama_tag.split(':')[0]} needs {need} or newer "
            "for vision and tools",
            "Update Ollama.",
        )
        return
    c.add("ollama", "ok", f"ollama {version}")


def _check_vllm(c: _Checks, version: str | None) -> None:
    from msmall.backends.vllm import versions

    named = c.strict and c.engine is not None and c.engine.name == "vllm" and c.runtime == "process"
    spec = _target_model(c)
    if version is None:
        c.add(
            "vllm",
            "fail" if named else "warn",
            "not installed (no vllm package or executable)",
            "pip install vllm, or use --backend docker (the vllm/vllm-openai image).",
        )
        return
    try:
        old = not versions.at_least(version, spec.vllm_min_version)
    except MsmallError:
        old = False
    if old:
        c.add(
            "vllm",
            "fail" if named else "warn",
            f"vllm {version} cannot serve {spec.display_name} (support arrived in "
            f"{spec.vllm_min_version})",
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
        from msmall.runtimes import container

        cli = container.client()
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
        gpu_problem=container.gpu_runtime_problem(info),
    )


def _check_docker(c: _Checks, inv: Inventory, status: DockerStatus) -> None:
    from msmall.backends.vllm import versions as engines
    from msmall.runtimes.container import TOOLKIT_FIX

    unreachable, runtime_problem = status.unreachable, status.gpu_problem
    named = c.strict and c.runtime == "container"
    if unreachable:
        c.add("docker", "fail" if named else "warn", unreachable, status.fix)
    else:
        c.add("docker", "ok", f"Docker {status.version} reachable")
        if runtime_problem:
            c.add(
                "docker-gpu",
                "fail" if named else "warn",
                runtime_problem,
                TOOLKIT_FIX,
            )
        else:
            c.add("docker-gpu", "ok", "an NVIDIA runtime (or CDI) is registered with Docker")
    major = hardware.driver_major(inv.driver_version)
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


def _check_hf_token(c: _Checks) -> None:
    source = hf_token_source()
    backend = c.backend
    engine = c.engine.name if c.engine else "vllm"
    gated = c.target is not None and engine == "vllm" and is_gated(c.target)
    if source:
        c.add("hf-token", "ok", f"Hugging Face token present ({source}; value not shown)")
        return
    fix = (
        "Accept the licence on the model's Hugging Face page, then export HF_TOKEN "
        "(a read token from huggingface.co/settings/tokens)."
    )
    if gated and c.target is not None:
        repo = c.target.model.hf_repo
        if model_cached(c.target, engine) is not None:
            c.add("hf-token", "ok", f"no HF_TOKEN, but {repo} is already downloaded")
            return
        c.add("hf-token", c.bad(), f"no HF_TOKEN: {repo} is gated and needs one", fix)
    elif c.target is not None:
        c.add(
            "hf-token",
            "ok",
            f"no HF_TOKEN; not needed for {c.label} ({backend}, "
            f"{c.target.model.ollama_tag if engine == 'ollama' else c.target.model.hf_repo})",
        )
    else:
        c.add(
            "hf-token",
            "warn",
            "no HF_TOKEN: the official mistralai repo (BF16 profiles) is gated and needs one",
            fix,
        )


def _check_port(c: _Checks) -> None:
    from msmall.runtimes.process import port_in_use

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
    elif c.engine is not None and c.engine.reusable_server is not None:
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


def _profile_fit(
    prof: Profile, inv: Inventory, others: list[Profile], backend: str | None = None
) -> ProfileFit:
    backend = backend or prof.backend
    engine, runtime = backends.resolve(backend)
    need = preflight.gpus_needed(prof)
    if not engine.needs_gpu or prof.hardware.gpu_count == 0:
        report = preflight.check_fit(prof, [], backend)
        return ProfileFit(
            name=prof.name,
            backend=backend,
            fits=True,
            verdict="fits",
            max_context=report.max_context,
            reason=report.reason,
            gpus_needed=0,
        )
    gpus = hardware.gpus_for(inv, runtime, None, prof.hardware.gpu_ids)
    machine = preflight.fit_on(prof, gpus, backend, False, others) if gpus else None
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
    now = (
        preflight.fit_on(prof, gpus, backend, True, others) if hardware.memory_free(gpus) else None
    )
    if now is not None and (
        now.verdict != machine.verdict or now.max_context != machine.max_context
    ):
        row.verdict_now = now.verdict
        row.max_context_now = now.max_context
    return row


def _check_fit_now(c: _Checks, inv: Inventory, row: ProfileFit, others: list[Profile]) -> None:
    """The named profile against the memory free right now: what `msmall serve` would decide."""
    if c.target is None or row.gpus_needed == 0:
        return
    backend = c.backend or c.target.backend
    gpus = hardware.gpus_for(inv, c.runtime, None, c.target.hardware.gpu_ids)
    if not gpus:
        c.add("memory-fit", c.bad(), f"{c.label}: no GPU to load it on", DEMO_FIX)
        return
    report = preflight.fit_on(c.target, gpus, backend, True, others)
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
    from msmall.profiles import load_profile, parse_set

    if backend is not None:
        backends.resolve(backend)  # an unknown backend is a ConfigError naming the valid ones
    named = load_profile(profile, parse_set(overrides)) if profile else None
    inv = inventory if inventory is not None else hardware.read_inventory()
    # Loaded once: the recommendation, every table row and every suggestion use this list.
    from msmall.profiles import load_all

    loaded = load_all()
    known = [p for p in loaded if not isinstance(p, ConfigError)]
    unusable = [p for p in loaded if isinstance(p, ConfigError)]
    recommended, why = preflight.recommend_for(inv, known)

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
    ollama = _probe("ollama")
    _check_ollama(c, ollama.version, ollama.problem)
    vllm = _probe("vllm").version
    _check_vllm(c, vllm)
    docker = docker_status()
    _check_docker(c, inv, docker)
    _check_hf_token(c)
    _check_port(c)
    if unusable:
        # One broken user profile is reported, never a crash: the others still load.
        c.add(
            "profiles",
            "warn",
            "; ".join(e.message for e in unusable),
            "Fix or remove those files (`msmall profiles validate FILE`).",
        )

    rows = [_profile_fit(p, inv, known) for p in known]
    named_row = None
    if named is not None:
        # The named profile as asked for (with --set / --backend), in place of the plain one.
        named_row = _profile_fit(named, inv, known, c.backend)
        rows = sorted([r for r in rows if r.name != named.name] + [named_row], key=lambda r: r.name)
    if target is not None:
        _check_fit_now(c, inv, named_row or next(r for r in rows if r.name == target.name), known)

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
        engines={"ollama": ollama.version, "vllm": vllm, "docker": docker.version},
        checks=c.items,
        profiles=rows,
        recommended_profile=recommended,
        recommended_reason=why,
        ok=exit_code == 0,
        exit_code=exit_code,
    )


def _probe(engine: str):
    probe = backends.get_engine(engine).probe_version
    assert probe is not None
    return probe()
