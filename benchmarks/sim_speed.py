"""CPU the simulator spends per streamed token, under `msmall bench` (a script, not CI).

    python benchmarks/sim_speed.py [-c 128] [--seconds 5]

Starts the simulator (`--ttft 0.2 --tpot 0.02 --max-num-seqs 512 --batch-slope 0
--disable-uvicorn-access-log`), runs one closed-loop level of C streams of 100 tokens for
--seconds, and prints the simulator process's user + system CPU over the tokens streamed
(per-request work included), its system share, and the bench client's figures.
MSMALL_EVENT_LOOP=asyncio runs both on asyncio's own loop instead of uvloop.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil
from bench_vs_peers import SIM_ARGS, streams_level  # this folder: the same load as `streams`

from msmall.simulator.harness import start_simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    engine, port = start_simulator(*SIM_ARGS)
    try:
        assert engine.proc is not None
        proc = psutil.Process(engine.proc.pid)
        before = proc.cpu_times()
        started = time.perf_counter()
        result = streams_level(port, args.concurrency, args.seconds)
        after = proc.cpu_times()
        wall = time.perf_counter() - started
    finally:
        engine.stop()
    level = result["levels"][0]
    tokens = max(1, level["output_tokens"])
    cpu = (after.user - before.user) + (after.system - before.system)
    print(
        f"streams {args.concurrency}: {level['output_tokens_per_s']:.0f} tokens/s, "
        f"TPOT {level['tpot_s']['mean'] * 1000:.2f} ms, TTFT {level['ttft_s']['mean'] * 1000:.1f} ms; "
        f"simulator CPU {cpu / wall * 100:.0f}%, {cpu / tokens * 1e6:.0f} us per token "
        f"({(after.system - before.system) / tokens * 1e6:.0f} us system); client CPU "
        f"{level['client']['cpu_percent']}%, loop lag p99 "
        f"{level['client']['loop_lag_p99_s'] * 1000:.1f} ms; load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
