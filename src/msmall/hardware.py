"""What this machine has: NVIDIA GPUs, driver and CUDA versions, RAM, free disk for the weights.

GPUs are read through NVML first (``pynvml`` from nvidia-ml-py) and through ``nvidia-smi`` when
NVML fails. No GPU, no driver or a broken driver is a normal answer: ``Inventory.gpus`` is empty
and ``Inventory.problem`` says why in plain words; nothing here raises for it.

Both readers list every GPU in the machine: NVML and nvidia-smi ignore ``CUDA_VISIBLE_DEVICES``,
and their indices follow PCI bus order, which CUDA's default order need not.

``MSMALL_GPU_SOURCE=auto|nvml|nvidia-smi|none`` forces one source (tests force ``nvidia-smi`` so a
machine with a real GPU still talks to the fake one on PATH).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from msmall.errors import ConfigError

GpuSource = Literal["nvml", "nvidia-smi", "none"]
SOURCES = ("auto", "nvml", "nvidia-smi", "none")

# nvidia-smi answers in well under a second; a hung driver makes it block for minutes.
SMI_TIMEOUT_S = 15.0
QUERY_FIELDS = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "memory.free",
    "driver_version",
    "compute_cap",
)
# Fields an older driver may reject; the query is retried without them (R470 lacks compute_cap).
OPTIONAL_QUERY_FIELDS = ("compute_cap",)

_MIB = 1024 * 1024
_GIB = 1024 * 1024 * 1024


# Plain dataclasses rather than pydantic: the data is built here, not parsed from users, and
# `msmall doctor` should not pay for pydantic before it has anything to validate.
@dataclass(kw_only=True)
class GpuInfo:
    index: int
    name: str
    uuid: str | None = None
    # None where the driver answers N/A (unified-memory parts report no framebuffer size).
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    compute_capability: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class Disk:
    purpose: Literal["huggingface-cache", "ollama-models"]
    path: str
    # Measured on the nearest existing parent: the cache dir may not exist before a first pull.
    free_gib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class Inventory:
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    source: GpuSource = "none"
    problem: str | None = None
    ram_total_gib: float | None = None
    ram_available_gib: float | None = None
    disks: list[Disk] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: only str, int, float, None, lists and dicts."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Inventory:
        """The inverse of ``to_dict`` (for saved reports and tests)."""
        values = dict(data)
        values["gpus"] = [GpuInfo(**g) for g in data.get("gpus", [])]
        values["disks"] = [Disk(**d) for d in data.get("disks", [])]
        return cls(**values)


# ---------------------------------------------------------------- pure parsers

_NA_WORDS = {"n/a", "not supported", "unknown error", "insufficient permissions"}
_NUMBER_WITH_UNIT = re.compile(r"(-?\d+(?:\.\d+)?) [A-Za-z%/]+")
_HEADER_UNIT = re.compile(r"\s*\[[^\]]*\]$")
_INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')
# "Driver Version: 550.127.05"; from R610 on the header reads "KMD Version: 610.57.04".
_DRIVER_VERSION = re.compile(r"(?:Driver|KMD) Version:\s*(\d[\w.-]*)")
# "CUDA Version: 12.8"; from R610 on "CUDA UMD Version: 13.3". "CUDA Version: N/A" means none.
_CUDA_VERSION = re.compile(r"CUDA (?:UMD )?Version:\s*(\d+\.\d+)")


def _cell(raw: str) -> str | None:
    """One CSV cell: None for N/A in any spelling, the bare number for ``"24564 MiB"``."""
    cell = raw.strip()
    # "[N/A]", "[Not Supported]", "[Requested functionality has been deprecated]" under csv;
    # plain "N/A" under nounits.
    if not cell or cell.lower() in _NA_WORDS or (cell.startswith("[") and cell.endswith("]")):
        return None
    number = _NUMBER_WITH_UNIT.fullmatch(cell)
    return number.group(1) if number else cell


def parse_query_csv(
    text: str, fields: list[str] | tuple[str, ...] | None = None
) -> list[dict[str, str | None]]:
    """Rows of ``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`` as dicts.

    With ``fields`` None the first line is the header (``memory.total [MiB]`` -> ``memory.total``).
    With ``fields`` given, a header line is skipped if present. Cells are cleaned by ``_cell``.
    Lines with the wrong number of cells (a message such as "No devices were found") are dropped.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    first = [_HEADER_UNIT.sub("", h.strip()) for h in lines[0].split(",")]
    if fields is None:
        names, lines = first, lines[1:]
    else:
        names = list(fields)
        if first == names:
            lines = lines[1:]
    rows = []
    for line in lines:
        cells = line.split(",")
        if len(cells) == len(names):
            rows.append({name: _cell(c) for name, c in zip(names, cells, strict=True)})
    return rows


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def gpus_from_rows(rows: list[dict[str, str | None]]) -> list[GpuInfo]:
    """GpuInfo for each row of ``parse_query_csv`` (accepts the ``gpu_name``/``gpu_uuid`` aliases)."""
    gpus = []
    for position, row in enumerate(rows):
        index = _int(row.get("index"))
        gpus.append(
            GpuInfo(
                index=position if index is None else index,
                name=row.get("name") or row.get("gpu_name") or "unknown NVIDIA GPU",
                uuid=row.get("uuid") or row.get("gpu_uuid"),
                memory_total_mib=_int(row.get("memory.total")),
                memory_used_mib=_int(row.get("memory.used")),
                memory_free_mib=_int(row.get("memory.free")),
                compute_capability=row.get("compute_cap"),
            )
        )
    return gpus


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """(driver_version, cuda_version) from the plain ``nvidia-smi`` table header.

    ``Driver Version`` is the kernel driver; the ``NVIDIA-SMI`` number beside it can differ (WSL2).
    """
    driver = _DRIVER_VERSION.search(text)
    cuda = _CUDA_VERSION.search(text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def invalid_query_field(text: str) -> str | None:
    """The field nvidia-smi rejected (``Field "compute_cap" is not a valid field to query.``)."""
    match = _INVALID_FIELD.search(text)
    return match.group(1) if match else None


def cuda_version_from_int(version: int) -> str:
    """NVML's CUDA driver version: 12080 -> "12.8", 11040 -> "11.4"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


# ---------------------------------------------------------------- NVML


def _text(value: bytes | str) -> str:
    # pynvml before 11.x returns bytes for names and versions, later releases str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_problem(error: BaseException) -> str:
    if isinstance(error, ImportError):
        return "NVML is not available: the nvidia-ml-py package (pynvml) is not installed"
    # Codes from nvml.h; pynvml's exception subclasses vary across versions, the value does not.
    code = getattr(error, "value", None)
    known = {
        12: "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is installed",
        9: "the NVIDIA driver is installed but not loaded",
        4: "no permission to talk to the NVIDIA driver",
        15: "a GPU has fallen off the bus (NVML: GPU is lost); the machine needs a reboot",
        18: "NVIDIA driver and library versions differ (driver updated without a reboot?)",
    }
    return known.get(code, f"NVML failed: {error}")


def _nvml_optional(call: Any, *args: Any) -> Any:
    # Old drivers or cut-down parts (vGPU, MIG) lack some queries; that is no reason to give up.
    try:
        return call(*args)
    except Exception:
        return None


def _read_nvml() -> tuple[list[GpuInfo], str | None, str | None]:
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_int = _nvml_optional(pynvml.nvmlSystemGetCudaDriverVersion)
        if cuda_int is None and hasattr(pynvml, "nvmlSystemGetCudaDriverVersion_v2"):
            cuda_int = _nvml_optional(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            # v1 memory info: "used" includes the driver's reserved memory (nvidia-smi shows it
            # apart since R510); "free" is the same in both, and free is what a launch needs.
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            uuid = _nvml_optional(pynvml.nvmlDeviceGetUUID, handle)
            capability = _nvml_optional(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(uuid) if uuid is not None else None,
                    memory_total_mib=int(memory.total) // _MIB,
                    memory_used_mib=int(memory.used) // _MIB,
                    memory_free_mib=int(memory.free) // _MIB,
                    compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
                )
            )
        cuda = cuda_version_from_int(int(cuda_int)) if cuda_int else None
        return gpus, driver, cuda
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


# ---------------------------------------------------------------- nvidia-smi


class _SmiFailed(Exception):
    def __init__(self, problem: str, output: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.output = output


def _smi(args: list[str]) -> str:
    """stdout of ``nvidia-smi ARGS``; every way it can fail becomes ``_SmiFailed(problem)``."""
    from msmall import procs

    try:
        return procs.run(["nvidia-smi", *args], timeout_s=SMI_TIMEOUT_S).stdout
    except procs.ToolMissing:
        raise _SmiFailed("nvidia-smi is not on PATH") from None
    except procs.ToolFailed as e:
        if e.returncode is None:  # timed out or could not start
            raise _SmiFailed(e.problem) from None
        failure = e
    output = failure.output
    # nvidia-smi prints its errors on stdout; stderr is checked too for wrappers that don't.
    if "couldn't communicate with the NVIDIA driver" in output:
        problem = "nvidia-smi could not talk to the NVIDIA driver (not installed or not loaded)"
    elif "No devices were found" in output:
        problem = "nvidia-smi found no NVIDIA GPU"
    elif "version mismatch" in output.lower():
        problem = "NVIDIA driver and library versions differ (driver updated without a reboot?)"
    else:
        problem = failure.problem
    raise _SmiFailed(problem, output)


def _read_smi() -> tuple[list[GpuInfo], str | None, str | None]:
    fields = list(QUERY_FIELDS)
    while True:
        try:
            csv = _smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
            break
        except _SmiFailed as e:
            rejected = invalid_query_field(e.output)
            if rejected not in OPTIONAL_QUERY_FIELDS or rejected not in fields:
                raise
            fields.remove(rejected)
    rows = parse_query_csv(csv, fields)
    gpus = gpus_from_rows(rows)
    driver = next((row["driver_version"] for row in rows if row.get("driver_version")), None)
    try:
        # The CUDA version is only in the plain table's header, not a query field.
        header_driver, cuda = parse_smi_header(_smi([]))
    except _SmiFailed:
        header_driver, cuda = None, None
    return gpus, driver or header_driver, cuda


# ---------------------------------------------------------------- RAM and disks


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads, resolved the way the library resolves it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the second is the legacy spelling
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def ollama_models_dir() -> Path:
    """Where ``ollama serve`` keeps models for this user (``OLLAMA_MODELS`` or ~/.ollama/models).

    The Linux system service runs as user ``ollama`` and uses /usr/share/ollama/.ollama/models.
    """
    if os.environ.get("OLLAMA_MODELS"):
        return Path(os.environ["OLLAMA_MODELS"]).expanduser()
    return Path.home() / ".ollama" / "models"


def free_gib(path: Path) -> float | None:
    """Free space where ``path`` is or would be created (its nearest existing parent)."""
    import shutil

    try:
        probe = path.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return round(shutil.disk_usage(probe).free / _GIB, 2)
    except OSError:
        return None


def _ram_gib() -> tuple[float | None, float | None]:
    try:
        import psutil

        memory = psutil.virtual_memory()
    except (ImportError, OSError):
        return None, None
    return round(memory.total / _GIB, 2), round(memory.available / _GIB, 2)


def _disks() -> list[Disk]:
    stores = [("huggingface-cache", hf_cache_dir()), ("ollama-models", ollama_models_dir())]
    return [Disk(purpose=p, path=str(path), free_gib=free_gib(path)) for p, path in stores]


# ---------------------------------------------------------------- the inventory


def _chosen_source(source: str) -> str:
    if source == "auto":
        source = os.environ.get("MSMALL_GPU_SOURCE", "").strip().lower() or "auto"
        where = "MSMALL_GPU_SOURCE"
    else:
        where = "GPU source"
    if source not in SOURCES:
        raise ConfigError(
            f"{where} {source!r} is not one of {', '.join(SOURCES)}",
            fix="Use auto (NVML, then nvidia-smi), nvml, nvidia-smi or none.",
        )
    return source


# Where the dynamic loader finds libnvidia-ml.so.1 on Linux, besides LD_LIBRARY_PATH and
# /etc/ld.so.conf: distro library dirs, WSL2's driver dir, NVIDIA's container runtime mount.
_NVML_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
    "/lib/x86_64-linux-gnu", "/usr/lib/wsl/lib", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
)  # fmt: skip


def _ld_conf_dirs() -> list[str]:
    dirs: list[str] = []
    for conf in [Path("/etc/ld.so.conf"), *sorted(Path("/etc/ld.so.conf.d").glob("*.conf"))]:
        try:
            lines = conf.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        dirs += [ln.strip() for ln in lines if ln.strip().startswith("/")]
    return dirs


def nvml_library_present() -> bool:
    """Whether libnvidia-ml could load at all. Importing pynvml costs ~50 ms of every dry run;
    on a machine without the NVIDIA driver that is skipped (Linux only; elsewhere pynvml looks)."""
    import sys

    if sys.platform != "linux" or "pynvml" in sys.modules:
        return True
    dirs = [*os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep), *_ld_conf_dirs()]
    # The names pynvml loads; a stat each is cheaper than listing /usr/lib.
    return any(
        os.path.exists(os.path.join(d, name))
        for d in [*dirs, *_NVML_LIB_DIRS]
        if d
        for name in ("libnvidia-ml.so.1", "libnvidia-ml.so")
    )


def _read_gpus(source: str) -> tuple[list[GpuInfo], str | None, str | None, GpuSource, str | None]:
    """(gpus, driver, cuda, source used, problem)."""
    if source == "none":
        return [], None, None, "none", "GPU detection is turned off (MSMALL_GPU_SOURCE=none)"
    nvml_problem = None
    if source == "auto" and not nvml_library_present():
        nvml_problem = "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is installed"
    elif source in ("auto", "nvml"):
        try:
            gpus, driver, cuda = _read_nvml()
        except Exception as e:
            # NVML is a ctypes binding over a driver that may be half installed: whatever it
            # raises means "no answer from NVML", never a crash.
            nvml_problem = _nvml_problem(e)
        else:
            return gpus, driver, cuda, "nvml", None if gpus else "NVML found no NVIDIA GPU"
        if source == "nvml":
            return [], None, None, "none", nvml_problem
    try:
        gpus, driver, cuda = _read_smi()
    except _SmiFailed as e:
        problem = e.problem if nvml_problem is None else f"{nvml_problem}; {e.problem}"
        return [], None, None, "none", problem
    return gpus, driver, cuda, "nvidia-smi", None if gpus else "nvidia-smi listed no GPU"


def read_inventory(source: str = "auto", *, host: bool = True) -> Inventory:
    """Read GPUs, driver, CUDA, RAM and free disk. Never raises for missing or broken hardware.

    ``source="auto"`` honours ``MSMALL_GPU_SOURCE``, then tries NVML and falls back to nvidia-smi.
    An explicit ``source`` is used as given. An unknown source is a ``ConfigError``.
    ``host=False`` reads the GPUs only (what a serve preflight needs; RAM and disks cost imports).
    """
    gpus, driver, cuda, used, problem = _read_gpus(_chosen_source(source))
    if not host:
        return Inventory(gpus=gpus, driver_version=driver, cuda_version=cuda, source=used,
                         problem=problem)  # fmt: skip
    ram_total, ram_available = _ram_gib()
    return Inventory(
        gpus=gpus,
        driver_version=driver,
        cuda_version=cuda,
        source=used,
        problem=problem,
        ram_total_gib=ram_total,
        ram_available_gib=ram_available,
        disks=_disks(),
    )


# ---------------------------------------------------------------- choosing and describing GPUs


def visible_gpus(gpus: list[GpuInfo], selector: str | None) -> list[GpuInfo]:
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


def gpus_for(
    inv: Inventory,
    runtime: str,
    env: dict[str, str] | None = None,
    gpu_ids: list[str] | None = None,
) -> list[GpuInfo]:
    """The GPUs a server will get.

    A profile's gpu_ids choose them for every runtime. Otherwise a container gets every GPU (the
    host's CUDA_VISIBLE_DEVICES stays outside), and a host process inherits CUDA_VISIBLE_DEVICES
    (the plan's own env wins over the shell's).
    """
    if gpu_ids:
        return visible_gpus(inv.gpus, ",".join(gpu_ids))
    if runtime == "container":
        return list(inv.gpus)
    selector = (env or {}).get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return visible_gpus(inv.gpus, selector)


def _mib_text(value: int | None) -> str:
    return "?" if value is None else f"{value:,} MiB"


def describe_gpus(gpus: list[GpuInfo]) -> str:
    if not gpus:
        return "no GPU"
    names = {g.name for g in gpus}
    sizes = {g.memory_total_mib for g in gpus}
    if len(names) == 1 and len(sizes) == 1:
        size = next(iter(sizes))
        each = f" ({_mib_text(size)}{' each' if len(gpus) > 1 else ''})"
        return f"{len(gpus)}x {gpus[0].name}{each}" if len(gpus) > 1 else f"{gpus[0].name}{each}"
    return ", ".join(f"{g.name} ({_mib_text(g.memory_total_mib)})" for g in gpus)


def memory_totals(gpus: list[GpuInfo]) -> list[int] | None:
    """Each GPU's memory in MiB; None when any of them does not say."""
    totals = [g.memory_total_mib for g in gpus]
    return None if any(t is None for t in totals) else [int(t) for t in totals if t is not None]


def memory_free(gpus: list[GpuInfo]) -> list[int] | None:
    frees = [g.memory_free_mib for g in gpus]
    return None if any(f is None for f in frees) else [int(f) for f in frees if f is not None]


def driver_major(driver: str | None) -> int | None:
    match = re.match(r"v?(\d+)", (driver or "").strip())
    return int(match.group(1)) if match else None
