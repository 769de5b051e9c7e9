"""A stand-in for ``nvidia-smi`` that prints what the real one prints, for tests.

The scenario comes from ``FAKE_NVIDIA_SMI_SCENARIO`` (default ``1x4090``); ``FAKE_NVIDIA_SMI_SLEEP``
(seconds) makes it hang first, to test timeouts. It answers:

- ``nvidia-smi``                                 the table, with the header's driver/CUDA versions
- ``nvidia-smi -L``                              one ``GPU i: NAME (UUID: ...)`` line per GPU
- ``nvidia-smi --query-gpu=F1,F2 --format=csv[,noheader][,nounits]``

Every layout below was copied from a real capture (tests/data/nvidia-smi/README.md names them):
the 550/560 table from ``rtx4090-x8.txt`` and ``rtx3090-x2.txt``, the 590 table from
``h100-80gb-hbm3-idle.txt``, the narrow pre-525 table from the ``legacy-format-*`` captures.
The ``h100``, ``2x4090`` and ``3090`` tables reproduce those captures line for line (the test
suite checks it). The query CSV follows ``h100-all-fields-csv.txt`` (``[N/A]`` cells,
``NNN MiB`` units, ``name [unit]`` headers); under ``nounits`` ``[N/A]`` becomes ``N/A`` as in
the driver-440 capture. Numbers the captures do not show (memory.free, i.e. the reserved
memory of a 4090 or 3090) are estimates and are marked as such.
"""

from __future__ import annotations

import os
import sys
import time

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
NO_DRIVER_EXIT = 9
INVALID_FIELD_EXIT = 2
INVALID_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."


class _Record:
    """A keyword-or-positional record, as @dataclass makes, without importing dataclasses: that
    import is half of this fake's start-up (30 of 62 ms), and the suite runs it over 200 times.
    The fields are the class's annotations, in order; a class attribute is a default."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        names = list(type(self).__annotations__)
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        for name in names:
            if name not in given and not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__}: missing {name}")
        for name, value in given.items():
            if name not in names:
                raise TypeError(f"{type(self).__name__}: no field {name}")
            setattr(self, name, value)


class Process(_Record):
    pid: int
    kind: str  # "C" compute, "G" graphics
    name: str
    used_mib: int


class Gpu(_Record):
    name: str
    uuid: str
    bus_id: str
    total_mib: int
    used_mib: int
    # memory.total - memory.used - memory.free; drivers from ~R510 report it apart from "used".
    reserved_mib: int
    compute_cap: str
    persistence: str = "On"
    fan: str = "0%"
    temp_c: int = 28
    perf: str = "P8"
    power_w: int = 20
    power_cap_w: int = 450
    util_pct: int = 0
    disp_a: str = "Off"
    ecc: str = "Off"
    mig: str = "N/A"
    processes: tuple[Process, ...] | list[Process] = ()

    @property
    def free_mib(self) -> int:
        return self.total_mib - self.used_mib - self.reserved_mib


class Scenario(_Record):
    driver: str
    cuda: str
    style: str  # "r470" narrow table, "r550" wide table (550/560), "r590" wide table (590+)
    gpus: list[Gpu]
    # Query fields this driver does not know (R470 predates compute_cap).
    unknown_fields: tuple[str, ...] = ()


def _rtx4090(index: int, bus_id: str, temp_c: int, power_w: int) -> Gpu:
    # Rows of rtx4090-x8.txt (driver 550.127.05). Reserved 352 MiB is an estimate.
    return Gpu(
        name="NVIDIA GeForce RTX 4090",
        uuid=f"GPU-6f1c2a4e-9b3d-4c8f-a1e2-{index:012x}",
        bus_id=bus_id,
        total_mib=24564,
        used_mib=2,
        reserved_mib=352,
        compute_cap="8.9",
        temp_c=temp_c,
        power_w=power_w,
    )


def _scenarios() -> dict[str, Scenario]:
    gpu0 = _rtx4090(0, "00000000:01:00.0", 28, 20)
    gpu1 = _rtx4090(1, "00000000:25:00.0", 27, 20)
    busy = _rtx4090(0, "00000000:01:00.0", 41, 64)
    busy.used_mib = 8194
    busy.perf = "P2"
    # Process row shape from a 550.127.05 table with compute processes (uwsgi, 2088MiB).
    busy.processes = [Process(pid=41879, kind="C", name="python3", used_mib=8192)]
    h100 = Gpu(
        # h100-80gb-hbm3-idle.txt and the query capture of the same machine (free 81081 MiB).
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-00000000-0000-0000-0000-000000000000",
        bus_id="00000000:00:09.0",
        total_mib=81559,
        used_mib=0,
        reserved_mib=478,
        compute_cap="9.0",
        fan="N/A",
        temp_c=41,
        perf="P0",
        power_w=69,
        power_cap_w=700,
        ecc="0",
        mig="Disabled",
    )
    rtx3090 = Gpu(
        # First row of rtx3090-x2.txt (driver 560.35.03). Reserved 323 MiB is an estimate.
        name="NVIDIA GeForce RTX 3090",
        uuid="GPU-3b9e8f10-52c7-4d6a-8e0b-7c5d2f1a9e33",
        bus_id="00000000:41:00.0",
        total_mib=24576,
        used_mib=2,
        reserved_mib=323,
        compute_cap="8.6",
        fan="30%",
        temp_c=30,
        power_w=30,
        power_cap_w=350,
        ecc="N/A",
    )
    rtx3090_r470 = Gpu(
        # R470 reported total minus the reserved memory (24268 MiB on a 3090) and put nothing
        # aside, so free = total - used. Table shape from the legacy-format captures; the
        # name is cut to "NVIDIA GeForce ..." there, as real R470 tables show it.
        name="NVIDIA GeForce RTX 3090",
        uuid="GPU-8d2f4b71-0c3e-4a59-b6d1-2e7f90a4c5b8",
        bus_id="00000000:0A:00.0",
        total_mib=24268,
        used_mib=0,
        reserved_mib=0,
        compute_cap="8.6",
        persistence="Off",
        temp_c=38,
        power_w=20,
        power_cap_w=350,
        ecc="N/A",
    )
    return {
        "1x4090": Scenario("550.127.05", "12.4", "r550", [gpu0]),
        "2x4090": Scenario("550.127.05", "12.4", "r550", [gpu0, gpu1]),
        "4090-8gb-used": Scenario("550.127.05", "12.4", "r550", [busy]),
        "h100": Scenario("590.48.01", "13.1", "r590", [h100]),
        "3090": Scenario("560.35.03", "12.6", "r550", [rtx3090]),
        # huggingface/candle#733 and canonical/inference-snaps#89: 470.x rejects compute_cap.
        "old-470": Scenario(
            "470.182.03", "11.4", "r470", [rtx3090_r470], unknown_fields=("compute_cap",)
        ),
    }


# ---------------------------------------------------------------- the plain table


def _cut(name: str, width: int) -> str:
    # nvidia-smi cuts long names to fit the column: "NVIDIA GeForce RTX 2080 ...".
    return name if len(name) <= width else name[: width - 3] + "..."


def _wide_table(sc: Scenario) -> list[str]:
    new = sc.style == "r590"
    border = "+" + "-" * 89 + "+"
    cells = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    lines = [
        border,
        f"| NVIDIA-SMI {sc.driver:<23}Driver Version: {sc.driver:<15}CUDA Version: {sc.cuda:<9}|",
        cells if new else cells.replace("+", "|", 1)[:-1] + "+",
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
        "|                                         |                        |               MIG M. |",
        "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
    ]
    for i, g in enumerate(sc.gpus):
        power = f"{g.power_w}W / {g.power_cap_w:>4}W"
        lines += [
            f"| {i:>3}  {_cut(g.name, 27):<27}    {g.persistence:<4}"
            f"|   {g.bus_id} {g.disp_a:>3} |{g.ecc:>21} |",
            f"| {g.fan:>3} {g.temp_c:>4}C {g.perf:>5} {power:>23} "
            f"|{g.used_mib:>8}MiB / {g.total_mib:>6}MiB |{g.util_pct:>7}%{'Default':>13} |",
            f"|{'':41}|{'':24}|{g.mig:>21} |",
            cells,
        ]
    lines.append("" if new else " " * 89)
    lines += [
        border,
        "| Processes:" + " " * 78 + "|",
        "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |"
        if new
        else "|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |",
        "|        ID   ID                                                               Usage      |",
        "|" + "=" * 89 + "|",
    ]
    procs = [(i, p) for i, g in enumerate(sc.gpus) for p in g.processes]
    if not procs:
        lines.append(f"|  {'No running processes found':<87}|")
    lines += [_process_row(i, p, 89, pid_width=15 if new else 9) for i, p in procs]
    lines.append(border)
    return lines


def _process_row(gpu: int, p: Process, inner: int, pid_width: int) -> str:
    left = f"{gpu:>5}   N/A  N/A {p.pid:>{pid_width}}{p.kind:>7}   {p.name}"
    memory = f"{p.used_mib}MiB"
    return f"|{left:<{inner - len(memory) - 1}}{memory} |"


def _narrow_table(sc: Scenario) -> list[str]:
    border = "+" + "-" * 77 + "+"
    cells = "+" + "-" * 31 + "+" + "-" * 22 + "+" + "-" * 22 + "+"
    lines = [
        border,
        f"| NVIDIA-SMI {sc.driver:<13}Driver Version: {sc.driver:<13}CUDA Version: {sc.cuda:<9}|",
        "|" + "-" * 31 + "+" + "-" * 22 + "+" + "-" * 22 + "+",
        "| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |",
        "|                               |                      |               MIG M. |",
        "|" + "=" * 31 + "+" + "=" * 22 + "+" + "=" * 22 + "|",
    ]
    for i, g in enumerate(sc.gpus):
        lines += [
            f"| {i:>3}  {_cut(g.name, 18):<18}  {g.persistence:<5}| {g.bus_id} {g.disp_a:>3} "
            f"|{g.ecc:>21} |",
            f"| {g.fan:>3} {g.temp_c:>4}C {g.perf:>5} {g.power_w:>5}W / {g.power_cap_w:>3}W "
            f"|{g.used_mib:>7}MiB / {g.total_mib:>5}MiB |{g.util_pct:>7}%{'Default':>13} |",
            f"|{'':31}|{'':22}|{g.mig:>21} |",
            cells,
        ]
    lines += [
        " " * 79,
        border,
        "| Processes:" + " " * 66 + "|",
        "|  GPU   GI   CI        PID   Type   Process name                  GPU Memory |",
        "|        ID   ID                                                   Usage      |",
        "|" + "=" * 77 + "|",
    ]
    procs = [(i, p) for i, g in enumerate(sc.gpus) for p in g.processes]
    if not procs:
        lines.append(f"|  {'No running processes found':<75}|")
    lines += [_process_row(i, p, 77, pid_width=9) for i, p in procs]
    lines.append(border)
    return lines


def table(sc: Scenario, timestamp: str | None = None) -> str:
    # nvidia-smi pads its timestamp line with spaces (see the H100 capture).
    stamp = (timestamp or time.ctime()) + "       "
    body = _narrow_table(sc) if sc.style == "r470" else _wide_table(sc)
    return "\n".join([stamp, *body]) + "\n"


# ---------------------------------------------------------------- --query-gpu


def _values(g: Gpu, sc: Scenario, index: int) -> dict[str, tuple[str | None, str | None]]:
    """Every query field the fake knows: (value, unit); value None is what prints as [N/A]."""
    return {
        "index": (str(index), None),
        "count": (str(len(sc.gpus)), None),
        "name": (g.name, None),
        "gpu_name": (g.name, None),
        "uuid": (g.uuid, None),
        "gpu_uuid": (g.uuid, None),
        "pci.bus_id": (g.bus_id, None),
        "gpu_bus_id": (g.bus_id, None),
        "driver_version": (sc.driver, None),
        "memory.total": (str(g.total_mib), "MiB"),
        "memory.used": (str(g.used_mib), "MiB"),
        "memory.free": (str(g.free_mib), "MiB"),
        "memory.reserved": (str(g.reserved_mib), "MiB"),
        "compute_cap": (g.compute_cap, None),
        "persistence_mode": ("Enabled" if g.persistence == "On" else "Disabled", None),
        "pstate": (g.perf, None),
        "temperature.gpu": (str(g.temp_c), None),
        "utilization.gpu": (str(g.util_pct), "%"),
        "fan.speed": (None if g.fan == "N/A" else g.fan.rstrip("%"), "%"),
        "power.draw": (f"{g.power_w:.2f}", "W"),
        "power.limit": (f"{g.power_cap_w:.2f}", "W"),
    }


def query(sc: Scenario, names: list[str], options: set[str]) -> str:
    # The real tool knows ~300 fields; the fake only these, and rejects the rest the real way.
    table = [_values(g, sc, i) for i, g in enumerate(sc.gpus)]
    for name in names:
        if name not in table[0] or name in sc.unknown_fields:
            # Real nvidia-smi writes this to stdout, followed by a blank line, and exits 2.
            raise _Exit(f'Field "{name}" is not a valid field to query.\n\n', INVALID_FIELD_EXIT)
    nounits = "nounits" in options
    out = []
    if "noheader" not in options:
        # The header keeps its units even under nounits.
        units = [table[0][name][1] for name in names]
        out.append(", ".join(f"{n} [{u}]" if u else n for n, u in zip(names, units, strict=True)))
    for values in table:
        row = []
        for name in names:
            value, unit = values[name]
            if value is None:
                row.append("N/A" if nounits else "[N/A]")
            elif unit and not nounits:
                row.append(f"{value} {unit}")
            else:
                row.append(value)
        out.append(", ".join(row))
    return "".join(line + "\n" for line in out)


class _Exit(Exception):
    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def run(args: list[str], scenario_name: str) -> tuple[str, int]:
    scenarios = _scenarios()
    if scenario_name == "none":
        return NO_DRIVER + "\n", NO_DRIVER_EXIT
    sc = scenarios.get(scenario_name)
    if sc is None:
        known = ", ".join(["none", *scenarios])
        sys.stderr.write(f"fake nvidia-smi: unknown scenario {scenario_name!r} (known: {known})\n")
        return "", 99
    if not args:
        return table(sc), 0
    if args == ["-L"]:
        return "".join(f"GPU {i}: {g.name} (UUID: {g.uuid})\n" for i, g in enumerate(sc.gpus)), 0
    fields = _option(args, "--query-gpu")
    fmt = _option(args, "--format")
    if fields is None or fmt is None:
        return INVALID_ARGS + "\n", 2
    options = {o.strip() for o in fmt.split(",")}
    if "csv" not in options or not options <= {"csv", "noheader", "nounits"}:
        return INVALID_ARGS + "\n", 2
    try:
        return query(sc, [f.strip() for f in fields.split(",") if f.strip()], options), 0
    except _Exit as e:
        return e.text, e.code


def main() -> int:
    delay = float(os.environ.get("FAKE_NVIDIA_SMI_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)
    text, code = run(sys.argv[1:], os.environ.get("FAKE_NVIDIA_SMI_SCENARIO", "1x4090"))
    sys.stdout.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
