"""`msmall ps`, `msmall logs`, `msmall stop`."""

from __future__ import annotations

from typing import Optional

import typer

from msmall.cli.output import out, print_json


def register(app: typer.Typer) -> None:
    app.command("ps")(ps)
    app.command("logs")(logs)
    app.command("stop")(stop)


def ps(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="MSMALL_API_KEY",
        show_envvar=True,
        help="Key for probing deployments served with one (records never hold keys).",
    ),
) -> None:
    """List msmall deployments with their live health."""
    import sys

    from msmall.deployments import list_deployments

    rows = list_deployments(api_key=api_key or None)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out().print("no deployments (start one with `msmall serve --detach`)", markup=False)
        return
    if not sys.stdout.isatty():
        # In a pipe: whole names and URLs, tab-separated, so scripts can cut columns.
        cols = ("name", "profile", "backend", "status", "health", "base_url")
        sys.stdout.write(
            "\t".join(c if c != "base_url" else "url" for c in cols) + "\tpid/container\n"
        )
        for r in rows:
            ident = str(r.get("pid") or "") or (r.get("container_id") or "")
            sys.stdout.write("\t".join(str(r.get(c) or "") for c in cols) + f"\t{ident}\n")
        sys.stdout.flush()
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("name", "profile", "backend", "status", "health", "url", "pid/container"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        ident = str(r.get("pid") or "") or (r.get("container_id") or "")[:12]
        table.add_row(
            r["name"],
            r.get("profile", ""),
            r.get("backend", ""),
            r["status"],
            r["health"],
            r.get("base_url", ""),
            ident,
        )
    out().print(table)


def logs(
    name: str = typer.Argument(..., help="Deployment name (see `msmall ps`)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", help="How many lines to show first."),
) -> None:
    """Show a deployment's server log."""
    import sys

    from msmall import deployments

    for line in deployments.log_lines(name, lines):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if follow:

        def emit(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        try:
            deployments.follow(name, emit)
        except KeyboardInterrupt:
            pass


def stop(
    name: Optional[str] = typer.Argument(None, help="Deployment name (see `msmall ps`)."),
    all_: bool = typer.Option(False, "--all", help="Stop every deployment."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stop a deployment (or --all) and leave nothing running."""
    from msmall import deployments
    from msmall.errors import ConfigError

    if bool(name) == all_:
        raise ConfigError("give a deployment name or --all", "Example: msmall stop demo")
    done = deployments.stop_all() if all_ else [deployments.stop(name)]
    if as_json:
        print_json(done)
    else:
        for item in done:
            out().print(f"{item['name']}: {item['action']}", markup=False)
        if not done:
            out().print("nothing to stop", markup=False)
    if any(item.get("error") for item in done):
        raise typer.Exit(1)
