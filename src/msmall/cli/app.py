"""The `msmall` command. Sub-commands live in one module per group and import the core lazily,
so `msmall --help` costs little more than Typer itself."""

from __future__ import annotations

import atexit
import os
import signal
import sys

import typer

from msmall import __version__
from msmall.cli import bench as bench_cmd
from msmall.cli import deployments as deployments_cmd
from msmall.cli import doctor as doctor_cmd
from msmall.cli import export as export_cmd
from msmall.cli import health as health_cmd
from msmall.cli import profiles as profiles_cmd
from msmall.cli import serve as serve_cmd
from msmall.cli import simulate as simulate_cmd
from msmall.errors import interrupt

app = typer.Typer(
    name="msmall",
    help="Run Mistral Small 3.1 on your own GPUs (Ollama, vLLM, Docker) and prove the endpoint "
    "serves chat, tool calls and images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: rich-formatted help imports ~50 ms of rich modules on every `--help`.
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(profiles_cmd.app, name="profiles")
serve_cmd.register(app)
health_cmd.register(app)
deployments_cmd.register(app)
simulate_cmd.register(app)
doctor_cmd.register(app)
export_cmd.register(app)
bench_cmd.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msmall {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug:
        os.environ["MSMALL_DEBUG"] = "1"


def main() -> None:
    # httpx's __init__ imports its own command-line client (httpx/_main.py: click, pygments,
    # rich.syntax and rich.progress) where those are installed, about 0.1 s of CPU on every
    # msmall start that probes a server; this process never runs it, and httpx falls back to
    # a stub on ImportError (httpx/__init__.py). Only here, in the CLI process: importing
    # msmall as a library leaves httpx alone.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    # Our own handler, not the inherited disposition: started as a background job of a script
    # (or by a CI runner) msmall inherits SIGINT ignored, and Ctrl-C must still stop the server.
    signal.signal(signal.SIGINT, interrupt)
    code = 130
    try:
        code = _run()
    except KeyboardInterrupt:
        # A Ctrl-C while an error is being printed (a second press, say) still exits 130,
        # never with a traceback or killed by the signal.
        code = 130
    finally:
        try:
            _exit_on_late_signals(code)
        except KeyboardInterrupt:
            # The Ctrl-C landed between _run() returning and the guard taking over.
            _exit_on_late_signals(code)
    sys.exit(code)


def _exit_on_late_signals(code: int) -> None:
    """The work is done (the server stopped, the error printed): a signal arriving now, while
    Python shuts down, must not change the exit code.
    - Until shutdown, a late signal exits at once with this code (a KeyboardInterrupt raised
      this late would escape the program, and CPython then kills itself with SIGINT).
    - Late in shutdown, after the atexit functions, CPython resets every signal that has a
      Python handler to SIG_DFL (`_PySignal_Fini` in Python/pylifecycle.c), so a signal there
      kills the process. Ignored signals are left alone, hence `_ignore_late_signals` at exit.
    The -2 the suite's interrupt tests saw under load had another cause: see errors.Interrupt.
    """

    def leave(signum: int, frame: object) -> None:
        os._exit(code)

    for sig in LATE_SIGNALS:
        signal.signal(sig, leave)
    atexit.register(_ignore_late_signals)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


LATE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_late_signals() -> None:
    # The last atexit function registered runs first, and nothing after it needs a signal: the
    # threads were joined before atexit runs, and the process is only freeing memory now.
    for sig in LATE_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _run() -> int:
    from msmall.errors import MsmallError

    try:
        app(prog_name="msmall")
    except MsmallError as exc:
        if os.environ.get("MSMALL_DEBUG"):
            raise
        from rich.text import Text

        from msmall.cli.output import err

        # Text, not markup: messages quote engine output such as `[[gpu]]`.
        err().print(Text.assemble(("error: ", "bold red"), exc.message))
        if exc.fix:
            err().print(Text("  " + exc.fix))
        for line in exc.details:
            err().print(Text("  | " + line, style="dim"))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        # typer/click end with sys.exit(code); keep their code.
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    return 0
