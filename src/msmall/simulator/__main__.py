"""``python -m msmall.simulator``: run one simulated engine until SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    # A stop that arrives while starting up (imports, argument parsing) still exits 0 without a
    # traceback; once serving, serve() installs its own handlers for a graceful shutdown.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    from msmall.simulator.config import config_from_args

    config = config_from_args(argv)
    # Imported after argument parsing so that --help and argument errors stay fast.
    from msmall.simulator.server import serve

    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
