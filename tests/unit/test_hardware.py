"""Hardware inventory: parsers on real nvidia-smi captures, the fake nvidia-smi against those
captures, read_inventory through the fake executable and through substituted NVML functions."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from conftest import DATA_DIR, FAKES_DIR
from msmall import hardware
from msmall.errors import ConfigError
from msmall.hardware import (
    GpuInfo,
    Inventory,
    gpus_from_rows,
    invalid_query_field,
    parse_query_csv,
    parse_smi_header,
    read_inventory,
)

SAMPLES = DATA_DIR / "nvidia-smi"
MIB = 1024 * 1024

sys.path.insert(0, str(FAKES_DIR))
import fake_nvidia_smi as fake  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "MSMALL_GPU_SOURCE",
        "FAKE_NVIDIA_SMI_SCENARIO",
        "FAKE_NVIDIA_SMI_SLEEP",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def output_of(name: str) -> str:
    """A capture without its first line when that line is the command, not the output."""
    lines = sample(name).splitlines(keepends=True)
    return "".join(lines[1:]) if lines[0].startswith(("$ ", "# $ ")) else "".join(lines)


# ---------------------------------------------------------------- parse_smi_header


@pytest.mark.parametrize(
    ("name", "driver", "cuda"),
    [
        ("driver530-transitional-format-tesla-p4.txt", "530.30.02", "12.1"),
        ("h100-80gb-hbm3-idle.txt", "590.48.01", "13.1"),
        ("h100-80gb-hbm3-load.txt", "590.48.01", "13.1"),
        ("legacy-format-driver455-rtx3090.txt", "455.23.04", "11.1"),
        ("legacy-format-driver515-tesla-p100-x4-truncated-name.txt", "515.65.01", "11.7"),
        # R610 renamed the header fields to KMD Version / CUDA UMD Version.
        ("rtx2080super-driver610-kmd-header.txt", "610.57.04", "13.3"),
        # WSL2: the NVIDIA-SMI number (565.72) is not the driver (566.14).
        ("rtx3080-wsl2-smi-vs-driver-version-differ.txt", "566.14", "12.7"),
        ("rtx3090-windows-wddm.txt", "556.12", "12.5"),
        ("rtx3090-x2.txt", "560.35.03", "12.6"),
        ("rtx4090-multi-first-two-rows.txt", "550.163.01", "12.4"),
        ("rtx4090-x8.txt", "550.127.05", "12.4"),
        ("rtx4090d-single.txt", "550.107.02", "12.4"),
        ("failed-no-driver.txt", None, None),
    ],
)
def test_parse_smi_header(name: str, driver: str | None, cuda: str | None) -> None:
    assert parse_smi_header(sample(name)) == (driver, cuda)


def test_parse_smi_header_cuda_na() -> None:
    line = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: N/A      |"
    assert parse_smi_header(line) == ("550.54.15", None)


# ---------------------------------------------------------------- parse_query_csv


def test_query_csv_with_header_h100_all_fields() -> None:
    rows = parse_query_csv(output_of("query-h100-all-fields-csv.txt"))
    assert len(rows) == 1
    row = rows[0]
    # Header units are dropped from names, value units from numbers.
    assert row["memory.total"] == "81559"
    assert row["memory.free"] == "81081"
    assert row["power.draw"] == "69.85"
    assert row["compute_cap"] == "9.0"
    # "[N/A]" and "[Requested functionality has been deprecated]" are no values.
    assert row["fan.speed"] is None
    assert row["display_mode"] is None
    assert row["timestamp"] == "2026/07/14 08:12:38.696"
    [gpu] = gpus_from_rows(rows)
    assert gpu == GpuInfo(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-00000000-0000-0000-0000-000000000000",
        memory_total_mib=81559,
        memory_used_mib=0,
        memory_free_mib=81081,
        compute_capability="9.0",
    )
    assert row["driver_version"] == "590.48.01"


def test_query_csv_driver610_full_name_and_empty_cell() -> None:
    rows = parse_query_csv(output_of("query-rtx2080super-driver610-all-fields-csv.txt"))
    [row] = rows
    assert row["driver_version"] == row["kmd_version"] == "610.57.04"
    assert row["platform.chassis_serial_number"] is None  # an empty cell in the capture
    [gpu] = gpus_from_rows(rows)
    # The table cuts the name ("NVIDIA GeForce RTX 2080 ..."); the query gives it whole.
    assert "NVIDIA GeForce RTX 2080 ..." in sample("rtx2080super-driver610-kmd-header.txt")
    assert gpu.name == "NVIDIA GeForce RTX 2080 SUPER"
    assert (gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib) == (8192, 211, 7582)
    assert gpu.compute_capability == "7.5"


def test_query_csv_compute_cap_only() -> None:
    assert parse_query_csv(output_of("query-compute-cap-csv-header.txt")) == [
        {"compute_cap": "8.9"}
    ]
    # Given the fields, a header line is recognised and skipped.
    text = output_of("query-compute-cap-csv-header.txt")
    assert parse_query_csv(text, ["compute_cap"]) == [{"compute_cap": "8.9"}]


def test_query_csv_noheader_nounits_from_debug_repr() -> None:
    # The capture shows the stdout line inside a Python list repr (the tool's debug print);
    # the command line above it names the fields.
    lines = sample("query-noheader-nounits-debug-repr-rtx2080-driver440.txt").splitlines()
    fields = re.search(r"--query-gpu=(\S+)", lines[0]).group(1).split(",")
    stdout_line = ast.literal_eval(lines[2])[0]
    [row] = parse_query_csv(stdout_line, fields)
    assert row["temperature.memory"] is None  # plain "N/A" under nounits
    assert row["pstate"] == "P2"
    [gpu] = gpus_from_rows([row])
    assert gpu.name == "GeForce RTX 2080"  # no "NVIDIA" prefix before R465
    assert gpu.uuid == "GPU-22b2c6ac-2d49-4863-197c-9c469071178a"
    assert gpu.memory_total_mib == 7979
    assert gpu.memory_free_mib is None  # not queried
    assert gpu.index == 0  # not queried either: position


def test_query_csv_ignores_message_lines() -> None:
    text = "0, NVIDIA GeForce RTX 4090, 24564\nNo devices were found\n"
    assert parse_query_csv(text, ["index", "name", "memory.total"]) == [
        {"index": "0", "name": "NVIDIA GeForce RTX 4090", "memory.total": "24564"}
    ]
    assert parse_query_csv("", ["index"]) == []


def test_invalid_query_field() -> None:
    assert invalid_query_field(sample("query-compute-cap-invalid-field.txt")) == "compute_cap"
    assert invalid_query_field("0, NVIDIA H100 80GB HBM3") is None


def test_cuda_version_from_int() -> None:
    assert hardware.cuda_version_from_int(12080) == "12.8"
    assert hardware.cuda_version_from_int(11040) == "11.4"
    assert hardware.cuda_version_from_int(13010) == "13.1"


# ---------------------------------------------------------------- the fake matches the captures


def _without_timestamp(text: str) -> list[str]:
    return text.splitlines()[1:]


def test_fake_h100_table_is_the_capture() -> None:
    table = fake.table(fake._scenarios()["h100"])
    assert _without_timestamp(table) == _without_timestamp(sample("h100-80gb-hbm3-idle.txt"))


def test_fake_4090_and_3090_tables_are_the_captures() -> None:
    x8 = sample("rtx4090-x8.txt").splitlines()
    two = fake.table(fake._scenarios()["2x4090"]).splitlines()[1:]
    # Header and the first two GPU blocks of the 8-GPU capture, then its process section.
    assert two == x8[:15] + x8[39:]
    x2 = sample("rtx3090-x2.txt").splitlines()
    one = fake.table(fake._scenarios()["3090"]).splitlines()[1:]
    assert one == x2[:11] + x2[15:]


def test_fake_narrow_table_matches_legacy_capture() -> None:
    # The R470 scenario uses the pre-525 narrow table; fed the 455 capture's numbers it must
    # print the capture's lines.
    gpu = fake.Gpu(
        name="GeForce RTX 3090",
        uuid="GPU-x",
        bus_id="00000000:01:00.0",
        total_mib=24267,
        used_mib=0,
        reserved_mib=0,
        compute_cap="8.6",
        persistence="Off",
        temp_c=56,
        perf="P0",
        power_w=43,
        power_cap_w=350,
        ecc="N/A",
    )
    table = fake.table(fake.Scenario("455.23.04", "11.1", "r470", [gpu])).splitlines()
    capture = sample("legacy-format-driver455-rtx3090.txt").splitlines()
    assert table[1:11] == capture[2:12]
    p100 = sample("legacy-format-driver515-tesla-p100-x4-truncated-name.txt")
    assert fake._cut("Tesla P100-PCIE-16GB", 18) + "  Off  |" in p100


def test_fake_process_rows_match_captures() -> None:
    load = sample("h100-80gb-hbm3-load.txt").splitlines()
    procs = [
        fake.Process(11327, "C", "/root/tools/memhog", 2566),
        fake.Process(11328, "C", "/root/tools/memhog", 1542),
        fake.Process(11345, "C", "./gpu_burn", 15690),
    ]
    assert [fake._process_row(0, p, 89, pid_width=15) for p in procs] == load[18:21]


def test_fake_error_messages_are_the_real_ones() -> None:
    text, code = fake.run([], "none")
    assert (text.strip(), code) == (sample("failed-no-driver.txt").splitlines()[1], 9)
    args = ["--query-gpu=index,compute_cap", "--format=csv,noheader,nounits"]
    text, code = fake.run(args, "old-470")
    assert code == 2
    assert text == sample("query-compute-cap-invalid-field.txt") + "\n"


def test_fake_query_formats() -> None:
    args = ["--query-gpu=memory.total,fan.speed,name", "--format=csv"]
    text, code = fake.run(args, "h100")
    assert code == 0
    assert text.splitlines() == [
        "memory.total [MiB], fan.speed [%], name",
        "81559 MiB, [N/A], NVIDIA H100 80GB HBM3",
    ]
    args = ["--query-gpu=fan.speed,memory.free", "--format=csv,noheader,nounits"]
    text, _ = fake.run(args, "h100")
    assert text == "N/A, 81081\n"
    text, code = fake.run(["--query-gpu=index,bogus", "--format=csv"], "1x4090")
    assert (text, code) == ('Field "bogus" is not a valid field to query.\n\n', 2)


# ---------------------------------------------------------------- read_inventory through the fake


R4090, R3090 = "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"
EXPECTED = {
    # scenario: (gpu count, name, total, used, free, capability, driver, cuda)
    "1x4090": (1, R4090, 24564, 2, 24210, "8.9", "550.127.05", "12.4"),
    "2x4090": (2, R4090, 24564, 2, 24210, "8.9", "550.127.05", "12.4"),
    "4090-8gb-used": (1, R4090, 24564, 8194, 16018, "8.9", "550.127.05", "12.4"),
    "h100": (1, "NVIDIA H100 80GB HBM3", 81559, 0, 81081, "9.0", "590.48.01", "13.1"),
    "3090": (1, R3090, 24576, 2, 24251, "8.6", "560.35.03", "12.6"),
    # R470 rejects compute_cap: the query is retried without it.
    "old-470": (1, R3090, 24268, 0, 24268, None, "470.182.03", "11.4"),
}


@pytest.fixture
def smi(fakes_on_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Force the nvidia-smi source and pick the fake's scenario."""
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "nvidia-smi")

    def use(scenario: str) -> None:
        monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", scenario)

    return use


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_read_inventory_through_fake(smi, scenario: str) -> None:
    smi(scenario)
    inv = read_inventory()
    count, name, total, used, free, capability, driver, cuda = EXPECTED[scenario]
    assert (inv.source, inv.problem) == ("nvidia-smi", None)
    assert (inv.driver_version, inv.cuda_version) == (driver, cuda)
    assert [g.index for g in inv.gpus] == list(range(count))
    assert len({g.uuid for g in inv.gpus}) == count
    for gpu in inv.gpus:
        assert gpu.name == name
        assert (gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib) == (
            total,
            used,
            free,
        )
        assert gpu.compute_capability == capability
        assert re.fullmatch(r"GPU-[0-9a-f-]{36}", gpu.uuid)


def test_read_inventory_no_driver(smi) -> None:
    smi("none")
    inv = read_inventory()
    assert (inv.gpus, inv.source, inv.driver_version, inv.cuda_version) == ([], "none", None, None)
    assert inv.problem == (
        "nvidia-smi could not talk to the NVIDIA driver (not installed or not loaded)"
    )


def test_read_inventory_nvidia_smi_not_on_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "nvidia-smi")
    monkeypatch.setenv("PATH", str(tmp_path))
    inv = read_inventory()
    assert (inv.gpus, inv.source, inv.problem) == ([], "none", "nvidia-smi is not on PATH")


def test_read_inventory_nvidia_smi_hangs(smi, monkeypatch) -> None:
    smi("1x4090")
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SLEEP", "10")
    monkeypatch.setattr(hardware, "SMI_TIMEOUT_S", 0.5)
    inv = read_inventory()
    assert (inv.gpus, inv.source) == ([], "none")
    assert inv.problem == "nvidia-smi did not answer within 0.5 s"


def test_read_inventory_nvidia_smi_other_failure(smi) -> None:
    smi("no-such-scenario")  # the fake exits 99 with a message on stderr
    inv = read_inventory()
    assert inv.source == "none"
    assert inv.problem.startswith("nvidia-smi exited with code 99: fake nvidia-smi: unknown")


def test_source_none_and_bad_source(monkeypatch) -> None:
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "none")
    inv = read_inventory()
    assert (inv.gpus, inv.source) == ([], "none")
    assert "turned off" in inv.problem
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "cuda")
    with pytest.raises(ConfigError, match="MSMALL_GPU_SOURCE 'cuda'"):
        read_inventory()
    with pytest.raises(ConfigError):
        read_inventory("rocm")


# ---------------------------------------------------------------- NVML (functions substituted)


class FakeNvml:
    """Stands in for the driver behind pynvml: two RTX 4090s, or a failure at a chosen call."""

    def __init__(self, as_bytes: bool = False, fail: dict[str, int] | None = None) -> None:
        self.as_bytes = as_bytes
        self.fail = fail or {}
        self.calls: list[str] = []

    def _s(self, value: str):
        return value.encode() if self.as_bytes else value

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise pynvml.NVMLError(self.fail[name])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        used = {0: 2 + 352, 1: 8194 + 352}  # NVML v1 "used" includes the reserved memory
        impl = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: self._s("550.127.05"),
            "nvmlSystemGetCudaDriverVersion": lambda: 12040,
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetName": lambda h: self._s("NVIDIA GeForce RTX 4090"),
            "nvmlDeviceGetUUID": lambda h: self._s(f"GPU-00000000-0000-0000-0000-00000000000{h}"),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
                total=24564 * MIB, used=used[h] * MIB, free=(24564 - used[h]) * MIB
            ),
            "nvmlDeviceGetCudaComputeCapability": lambda h: (8, 9),
        }
        for name, fn in impl.items():
            monkeypatch.setattr(pynvml, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def call(*args):
            self._call(name)
            return fn(*args)

        return call


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_nvml(monkeypatch, as_bytes: bool) -> None:
    nvml = FakeNvml(as_bytes=as_bytes)
    nvml.install(monkeypatch)
    inv = read_inventory()
    assert (inv.source, inv.problem) == ("nvml", None)
    assert (inv.driver_version, inv.cuda_version) == ("550.127.05", "12.4")
    assert inv.gpus[1] == GpuInfo(
        index=1,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-00000000-0000-0000-0000-000000000001",
        memory_total_mib=24564,
        memory_used_mib=8546,
        memory_free_mib=16018,
        compute_capability="8.9",
    )
    assert nvml.calls.count("nvmlShutdown") == 1


def test_nvml_optional_queries_may_fail(monkeypatch) -> None:
    fail = {
        "nvmlDeviceGetCudaComputeCapability": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlSystemGetCudaDriverVersion": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        "nvmlDeviceGetUUID": pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    FakeNvml(fail=fail).install(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlSystemGetCudaDriverVersion_v2", lambda: 12080, raising=False)
    inv = read_inventory("nvml")
    assert inv.source == "nvml"
    assert inv.cuda_version == "12.8"  # from the _v2 call
    assert {(g.compute_capability, g.uuid) for g in inv.gpus} == {(None, None)}


def test_nvml_init_fails_falls_back_to_nvidia_smi(monkeypatch, smi) -> None:
    nvml = FakeNvml(fail={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    nvml.install(monkeypatch)
    monkeypatch.delenv("MSMALL_GPU_SOURCE")
    smi("h100")
    inv = read_inventory()
    assert (inv.source, inv.problem) == ("nvidia-smi", None)
    assert [g.name for g in inv.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert "nvmlShutdown" not in nvml.calls


def test_nvml_fails_midway_shuts_down_and_falls_back(monkeypatch, smi) -> None:
    nvml = FakeNvml(fail={"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST})
    nvml.install(monkeypatch)
    monkeypatch.delenv("MSMALL_GPU_SOURCE")
    smi("3090")
    inv = read_inventory()
    assert inv.source == "nvidia-smi"
    assert inv.gpus[0].memory_total_mib == 24576
    assert nvml.calls.count("nvmlShutdown") == 1


def test_forced_nvml_does_not_fall_back(monkeypatch, smi) -> None:
    FakeNvml(fail={"nvmlInit": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH}).install(monkeypatch)
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "nvml")
    smi("1x4090")
    inv = read_inventory()
    assert (inv.gpus, inv.source) == ([], "none")
    assert inv.problem == (
        "NVIDIA driver and library versions differ (driver updated without a reboot?)"
    )


def test_forced_nvidia_smi_skips_working_nvml(monkeypatch, smi) -> None:
    nvml = FakeNvml()
    nvml.install(monkeypatch)
    smi("old-470")
    assert read_inventory().source == "nvidia-smi"
    assert nvml.calls == []


def _real_nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_auto_without_nvml_falls_back(smi, monkeypatch) -> None:
    if _real_nvml_works():
        pytest.skip("this machine has a working NVML; the fallback needs it missing")
    monkeypatch.delenv("MSMALL_GPU_SOURCE")
    smi("2x4090")
    inv = read_inventory()
    assert inv.source == "nvidia-smi"
    assert len(inv.gpus) == 2


def test_auto_nothing_works_says_both(monkeypatch, tmp_path: Path) -> None:
    FakeNvml(fail={"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND}).install(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    inv = read_inventory()
    assert (inv.gpus, inv.source) == ([], "none")
    assert inv.problem == (
        "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is installed; "
        "nvidia-smi is not on PATH"
    )


# ---------------------------------------------------------------- RAM, disks, JSON shape


def test_ram_and_disks(monkeypatch, isolated_world: Path) -> None:
    monkeypatch.setenv("MSMALL_GPU_SOURCE", "none")
    inv = read_inventory()
    assert inv.ram_total_gib > 0
    assert 0 <= inv.ram_available_gib <= inv.ram_total_gib
    home = isolated_world / "home"
    # conftest points HF_HOME at a directory that does not exist yet.
    assert [(d.purpose, d.path) for d in inv.disks] == [
        ("huggingface-cache", str(isolated_world / "hf" / "hub")),
        ("ollama-models", str(home / ".ollama" / "models")),
    ]
    assert all(d.free_gib > 0 for d in inv.disks)


def test_model_store_env_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    assert hardware.hf_cache_dir() == tmp_path / "hub-cache"
    assert hardware.ollama_models_dir() == tmp_path / "ollama"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hardware.hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hardware.hf_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"


def test_to_dict_shape(smi) -> None:
    smi("1x4090")
    data = read_inventory().to_dict()
    assert list(data) == [
        "gpus",
        "driver_version",
        "cuda_version",
        "source",
        "problem",
        "ram_total_gib",
        "ram_available_gib",
        "disks",
    ]
    assert list(data["gpus"][0]) == [
        "index",
        "name",
        "uuid",
        "memory_total_mib",
        "memory_used_mib",
        "memory_free_mib",
        "compute_capability",
    ]
    assert list(data["disks"][0]) == ["purpose", "path", "free_gib"]
    assert Inventory.from_dict(json.loads(json.dumps(data))).to_dict() == data


# ---------------------------------------------------------------- the real thing


@pytest.mark.gpu
def test_real_gpu() -> None:
    inv = read_inventory()
    if not inv.gpus:
        pytest.skip(f"no real NVIDIA GPU here: {inv.problem}")
    assert inv.source in ("nvml", "nvidia-smi")
    assert inv.driver_version
    assert re.fullmatch(r"\d+\.\d+", inv.cuda_version or "")
    for gpu in inv.gpus:
        assert gpu.memory_total_mib and gpu.memory_total_mib > 0
        assert re.fullmatch(r"\d+\.\d+", gpu.compute_capability or "")
    # Both readers must agree on what matters for a launch.
    by_nvml, by_smi = read_inventory("nvml"), read_inventory("nvidia-smi")
    if by_nvml.gpus and by_smi.gpus:
        assert [g.name for g in by_nvml.gpus] == [g.name for g in by_smi.gpus]
        assert [g.memory_total_mib for g in by_nvml.gpus] == [
            g.memory_total_mib for g in by_smi.gpus
        ]
        assert [g.compute_capability for g in by_nvml.gpus] == [
            g.compute_capability for g in by_smi.gpus
        ]
        assert by_nvml.driver_version == by_smi.driver_version
        assert by_nvml.cuda_version == by_smi.cuda_version


def test_nvml_is_not_imported_where_its_library_cannot_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping pynvml saves a dry run ~50 ms where no NVIDIA driver is installed; a library on
    LD_LIBRARY_PATH (or a pynvml already imported) means NVML is tried as before."""
    import sys

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(hardware, "_NVML_LIB_DIRS", ())
    monkeypatch.setattr(hardware, "_ld_conf_dirs", lambda: [])
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert not hardware.nvml_library_present()
    inv = read_inventory("auto")
    assert "pynvml" not in sys.modules
    assert inv.problem.startswith("NVML library (libnvidia-ml.so.1) not found")
    (tmp_path / "libnvidia-ml.so.1").write_bytes(b"")
    assert hardware.nvml_library_present()
