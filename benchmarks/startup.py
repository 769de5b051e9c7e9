"""How long `msmall` takes to start, against a bare Python start.

Each command runs N times as a fresh subprocess (after a few warm-up runs that fill the OS page
cache); the table gives the median and 95th percentile wall time and the median cost on top of
`python -c pass`. The target: `msmall --help` within 0.12 s of bare Python.

    python benchmarks/startup.py            # 30 runs each
    python benchmarks/startup.py -n 100 --json
    python benchmarks/startup.py --against /tmp/old/src   # before/after, runs interleaved

With ``--against DIR`` every msmall command is also run as ``python -m msmall`` with
PYTHONPATH=DIR (another checkout's ``src``, e.g. from ``git worktree add /tmp/old COMMIT``), one
run of each in turn, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_BUDGET_S = 0.12


def msmall_argv() -> list[str]:
    """The installed console script next to this Python, else `python -m msmall`."""
    script = Path(sys.executable).parent / "msmall"
    if script.is_file():
        return [str(script)]
    found = shutil.which("msmall")
    return [found] if found else [sys.executable, "-m", "msmall"]


def cases() -> list[tuple[str, list[str]]]:
    msmall = msmall_argv()
    return [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("msmall --help", [*msmall, "--help"]),
        ("msmall serve --profile 4090-q4 --dry-run", [*msmall, "serve", "--profile", "4090-q4", "--dry-run"]),
        (
            "msmall serve --profile 4090-q4 --backend vllm --vllm-version 0.33.0 --dry-run",
            [*msmall, "serve", "--profile", "4090-q4", "--backend", "vllm", "--vllm-version", "0.33.0", "--dry-run"],
        ),
    ]  # fmt: skip


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def time_runs(
    variants: list[tuple[list[str], dict[str, str]]], runs: int, warmup: int
) -> list[list[float]]:
    """Wall times of each variant, the variants run one after the other in every round."""
    times: list[list[float]] = [[] for _ in variants]
    for i in range(warmup + runs):
        for slot, (argv, env) in enumerate(variants):
            elapsed = _once(argv, env)
            if i >= warmup:
                times[slot].append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30, help="timed runs per command")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--against", metavar="SRC", help="also time another checkout's src dir (before/after)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # Isolated user world: no user profiles, no installed-vLLM probe surprises from PATH.
        env = {
            **os.environ,
            "MSMALL_CONFIG_DIR": str(Path(tmp) / "config"),
            "MSMALL_STATE_DIR": str(Path(tmp) / "state"),
            "NO_COLOR": "1",
        }
        results = []
        for label, argv in cases():
            variants = [(argv, env)]
            labels = [label]
            if args.against and label.startswith("msmall"):
                # Both as `python -m msmall`, the same way, differing only in the source tree.
                module = [sys.executable, "-m", "msmall", *argv[len(msmall_argv()) :]]
                variants = [(module, env), (module, {**env, "PYTHONPATH": args.against})]
                labels = [f"{label} (this tree)", f"{label} ({args.against})"]
            for name, times in zip(
                labels, time_runs(variants, args.runs, args.warmup), strict=True
            ):
                results.append(
                    {
                        "command": name,
                        "median_s": statistics.median(times),
                        "p95_s": percentile(times, 95),
                        "min_s": min(times),
                    }
                )
    base = results[0]["median_s"]
    for row in results:
        row["over_python_s"] = row["median_s"] - base
    help_over = results[1]["over_python_s"]
    meta = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "date": time.strftime("%Y-%m-%d"),
        "help_within_budget": help_over <= HELP_BUDGET_S,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
    else:
        print(
            f"Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs, "
            f"{args.runs} runs each ({args.warmup} warm-up), {meta['date']}\n"
        )
        print("| command | median (s) | p95 (s) | min (s) | median over `python -c pass` (s) |")
        print("|---|---:|---:|---:|---:|")
        for row in results:
            print(
                f"| `{row['command']}` | {row['median_s']:.3f} | {row['p95_s']:.3f} | "
                f"{row['min_s']:.3f} | {row['over_python_s']:+.3f} |"
            )
        verdict = "within" if meta["help_within_budget"] else "OVER"
        print(f"\n`msmall --help` is {help_over:.3f} s over bare Python: {verdict} the {HELP_BUDGET_S} s budget.")  # fmt: skip
    return 0 if meta["help_within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
