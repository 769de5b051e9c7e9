"""How long after the server starts answering does `msmall serve` report it ready?

Runs the real serve pipeline (launcher.serve, the simulator backend, no smoke checks) N times.
The simulator waits --startup-delay seconds before it listens, as vLLM does while loading. A
watcher thread polls /health every 2 ms to time the moment the endpoint first answers; the
pipeline's reporter times the moment msmall declares it ready. The difference is the readiness
latency (target: under 0.15 s).

    python benchmarks/readiness.py [--runs 20] [--startup-delay 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time

import httpx

from msmall.backends import PlanOptions
from msmall.launcher import NullReporter, ServeRequest, serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReadyClock(NullReporter):
    def __init__(self) -> None:
        self.ready_at: float | None = None

    def stage(self, text: str) -> None:
        if self.ready_at is None and text.startswith("all checks passed"):
            self.ready_at = time.perf_counter()


def watch(url: str, stop: threading.Event, out: dict[str, float]) -> None:
    with httpx.Client(timeout=0.5, trust_env=False) as client:
        while not stop.is_set():
            try:
                if client.get(url).status_code == 200:
                    out["answered_at"] = time.perf_counter()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.002)


def one_run(startup_delay: float) -> float:
    port = free_port()
    stop = threading.Event()
    seen: dict[str, float] = {}
    watcher = threading.Thread(
        target=watch, args=(f"http://127.0.0.1:{port}/health", stop, seen), daemon=True
    )
    watcher.start()
    clock = ReadyClock()
    request = ServeRequest(
        profile="demo",
        overrides=[f"extra_args={json.dumps(['--startup-delay', str(startup_delay), '--quiet'])}"],
        options=PlanOptions(port=port, deployment=f"bench-{port}"),
        smoke=False,
        check_only=True,
    )
    try:
        serve(request, clock)
    finally:
        stop.set()
        watcher.join(timeout=5)
    if clock.ready_at is None or "answered_at" not in seen:
        raise RuntimeError("run did not reach ready")
    return clock.ready_at - seen["answered_at"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--startup-delay", type=float, default=1.0)
    args = parser.parse_args()
    os.environ.setdefault("MSMALL_STATE_DIR", tempfile.mkdtemp(prefix="msmall-bench-"))
    os.environ.setdefault("MSMALL_GPU_SOURCE", "none")
    samples = [one_run(args.startup_delay) for _ in range(args.runs)]
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    print(f"runs: {len(samples)}, simulator startup delay {args.startup_delay} s")
    print("| readiness latency | median (s) | p95 (s) | max (s) |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| endpoint answers -> serve reports ready | {statistics.median(samples):.3f} "
        f"| {p95:.3f} | {samples[-1]:.3f} |"
    )


if __name__ == "__main__":
    main()
