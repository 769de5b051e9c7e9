"""`msmall simulate`: run the built-in simulator in the foreground."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "simulate",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(simulate)


def simulate(
    ctx: typer.Context,
    flavor: str = typer.Option("vllm", "--flavor", help="vllm | ollama"),
    port: int = typer.Option(
        None, "--port", help="Port (default 8000 for vllm, 11434 for ollama)."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Run a server that behaves like vLLM or Ollama serving Mistral Small 3.1 (no GPU needed).

    Extra options go to the simulator: see `python -m msmall.simulator --help`
    (--startup-delay, --ttft, --tpot, --fail MODE, ...).
    """
    import os
    import sys

    from msmall.errors import ConfigError

    if flavor not in ("vllm", "ollama"):
        raise ConfigError(f"--flavor must be vllm or ollama, not '{flavor}'")
    argv = [sys.executable, "-m", "msmall.simulator", "--flavor", flavor, "--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    argv += list(ctx.args)
    sys.stdout.flush()
    os.execv(sys.executable, argv)
