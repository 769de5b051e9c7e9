"""Run `vllm bench serve ARGS` and write the CPU its load phase used (a script, not CI).

    /work/vllm-venv/bin/python benchmarks/vllm_bench_cpu.py CPU_JSON serve ARGS...

Run with the vLLM venv's python. It is `vllm bench serve` itself (the `vllm` console script's
`vllm.entrypoints.cli.main.main`), with one wrapper: `vllm.benchmarks.serve.benchmark`, the
coroutine that sends the requests (its test request, warm-ups and the measured run; called by
name from `main_async` in the same module), is timed with `time.process_time()` before and
after, so the figure excludes importing torch and vLLM (about 20 s of CPU here), the tokenizer
and the dataset, as msmall's figure excludes its imports. CPU_JSON gets
`{"cpu_s": ..., "wall_s": ...}`.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    out, rest = sys.argv[1], sys.argv[2:]
    import vllm.benchmarks.serve as serve
    from vllm.entrypoints.cli.main import main as vllm_main

    inner = serve.benchmark

    async def timed(*args, **kwargs):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            with open(out, "w") as fh:
                json.dump({"cpu_s": cpu, "wall_s": wall}, fh)

    serve.benchmark = timed
    sys.argv = ["vllm", "bench", *rest]
    vllm_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
