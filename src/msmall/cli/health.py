"""`msmall health URL`: the smoke checks against any OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Optional

import typer

from msmall.cli.output import err, print_json


def register(app: typer.Typer) -> None:
    app.command("health")(health)


def health(
    url: str = typer.Argument(
        ..., help="Base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model name (default: the first listed)."
    ),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="MSMALL_API_KEY", show_envvar=True
    ),
    no_tools: bool = typer.Option(False, "--no-tools", help="Skip the tool-call check."),
    no_vision: bool = typer.Option(False, "--no-vision", help="Skip the image check."),
    timeout: float = typer.Option(
        120.0, "--timeout", help="Seconds each check may take in all (a slow server fails)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check that an endpoint really serves: chat, streaming, tool calls, images. Exit 0 only if all pass."""
    from msmall import health as core
    from msmall.errors import ConfigError, EndpointUnhealthy

    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    if not base.startswith(("http://", "https://")):
        raise ConfigError(
            f"'{core.clean(core.public_url(url))}' is not an http(s) URL",
            "Example: msmall health http://127.0.0.1:8000",
        )
    name = model or core.first_model(base, api_key)
    if not 0 < timeout <= 3600:
        raise ConfigError(f"--timeout {timeout} is not between 0 and 3600 seconds")
    report = core.smoke(
        base, name, api_key=api_key, tools=not no_tools, vision=not no_vision, timeout_s=timeout
    )
    if as_json:
        print_json(report.to_dict())
    else:
        from msmall.cli.serve_view import _check_line

        err().print(f"msmall: {core.public_url(base)} model {name}", markup=False)
        for check in report.checks:
            err().print(_check_line(check), markup=False)
    if not report.ok:
        failed = ", ".join(c.name for c in report.checks if not c.ok and not c.skipped)
        if as_json:
            raise typer.Exit(EndpointUnhealthy.exit_code)
        raise EndpointUnhealthy(f"{failed} failed at {core.public_url(base)}")
