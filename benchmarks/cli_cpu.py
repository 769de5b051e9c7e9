"""How much CPU whole msmall commands cost: user + system time of msmall and everything it waits
for (the engine it starts, the fake nvidia-smi), the machine's price for one run.

    python benchmarks/cli_cpu.py                         # 10 runs each
    python benchmarks/cli_cpu.py --against /tmp/old/src  # before/after, runs interleaved

The commands: `serve --profile demo --check` (the README's first command: start the built-in
simulator, wait for ready, run the smoke checks, stop it), `health URL` against a simulator this
script runs in-process (its CPU is not counted), and `ps` with that server recorded as a
deployment, so `ps` probes it. With ``--against SRC`` each command also runs as
``python -m msmall`` with PYTHONPATH=SRC (another checkout's ``src``), one run of each in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import percentile


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its waited-for children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _record(base_url: str) -> None:
    """A deployment record for the in-process simulator, for `ps` to probe: `external`, as for
    an Ollama daemon msmall reused, so no pid of its own is checked."""
    from msmall import state

    state.save(
        state.Deployment(
            name="bench", profile="demo", backend="simulator", base_url=base_url,
            served_model_name="mistral-small-3.1", log_path=os.devnull, external=True,
        )
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--against", metavar="SRC", help="also run another checkout's src dir")
    args = parser.parse_args()

    from msmall.simulator import SimulatorConfig, SimulatorThread

    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorThread(SimulatorConfig(port=0, quiet=True)) as sim,
    ):
        env = {
            **os.environ,
            "MSMALL_CONFIG_DIR": str(Path(tmp) / "config"),
            "MSMALL_STATE_DIR": str(Path(tmp) / "state"),
            "NO_COLOR": "1",
        }
        os.environ.update(MSMALL_STATE_DIR=env["MSMALL_STATE_DIR"])
        _record(sim.base_url)
        msmall = [sys.executable, "-m", "msmall"]
        commands = [
            ("serve --profile demo --check", ["serve", "--profile", "demo", "--check"]),
            ("health URL", ["health", sim.base_url + "/v1"]),
            ("ps (one deployment, probed)", ["ps"]),
        ]
        trees = [("this tree", env)]
        if args.against:
            trees.append((args.against, {**env, "PYTHONPATH": args.against}))
        results = []
        for label, extra in commands:
            samples: dict[str, list[tuple[float, float]]] = {tree: [] for tree, _ in trees}
            for i in range(args.warmup + args.runs):
                for tree, tree_env in trees:
                    measured = _once([*msmall, *extra], tree_env)
                    if i >= args.warmup:
                        samples[tree].append(measured)
            for tree, runs in samples.items():
                cpu = [c for _, c in runs]
                results.append(
                    {
                        "command": f"msmall {label}",
                        "tree": tree,
                        "cpu_median_s": statistics.median(cpu),
                        "cpu_p95_s": percentile(cpu, 95),
                        "wall_median_s": statistics.median(w for w, _ in runs),
                    }
                )
    if args.json:
        print(json.dumps({"runs": args.runs, "results": results}, indent=2))
        return 0
    print(f"{args.runs} runs each ({args.warmup} warm-up), {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| command | tree | CPU median (s) | CPU p95 (s) | wall median (s) |")
    print("|---|---|---:|---:|---:|")
    for row in results:
        print(
            f"| `{row['command']}` | {row['tree']} | {row['cpu_median_s']:.3f} | "
            f"{row['cpu_p95_s']:.3f} | {row['wall_median_s']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
