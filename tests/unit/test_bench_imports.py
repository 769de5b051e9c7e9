"""A bench of a URL stays light: resolving the target must not import the state layer's
pydantic models (about 0.3 s of CPU, which the CPU-per-token comparison with `vllm bench serve`
counted against msmall)."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys\n"
    "from msmall.bench.session import resolve\n"
    "got = resolve(sys.argv[1], None)\n"
    "assert got.url == 'http://127.0.0.1:9', got\n"
    "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'yaml'})))\n"
)


def test_resolving_a_url_imports_neither_pydantic_nor_yaml() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "http://127.0.0.1:9/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
