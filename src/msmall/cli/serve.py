"""`msmall serve`: plan, preflight, start, wait until ready, smoke-check, then wait or detach."""

from __future__ import annotations

from typing import Optional

import typer

from msmall.backends import backend_names
from msmall.cli.output import err, out, print_json


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="Profile name or YAML path (default: the one that fits)."
    ),
    backend: Optional[str] = typer.Option(
        None,
        "--backend",
        "-b",
        help=f"{' | '.join(backend_names())} (default: the profile's).",
    ),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: the backend's)."),
    set_: Optional[list[str]] = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="Override a profile setting: key=value (repeatable).",
    ),
    vllm_version: Optional[str] = typer.Option(
        None,
        "--vllm-version",
        help="Generate flags for this vLLM (default: installed, else newest).",
    ),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="MSMALL_API_KEY",
        show_envvar=True,
        help="Require this key on /v1 (needed to bind beyond 127.0.0.1).",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: profile)."),
    allow_unauthenticated: bool = typer.Option(
        False,
        "--allow-unauthenticated",
        help="Let an engine without authentication (Ollama) bind beyond 127.0.0.1.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command; run nothing."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once ready; keep serving."),
    no_smoke: bool = typer.Option(False, "--no-smoke", help="Skip the chat/tools/vision checks."),
    check: bool = typer.Option(
        False, "--check", help="Start, run the smoke checks, stop; exit 0 only if all pass."
    ),
    force: bool = typer.Option(False, "--force", help="Launch even when the memory check fails."),
    pull: str = typer.Option("missing", "--pull", help="Docker image: never | missing | always."),
    ready_timeout: Optional[float] = typer.Option(
        None,
        "--ready-timeout",
        help="Give up after this many seconds (default: wait while the "
        "server process lives and makes progress).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Serve Mistral Small with a profile and prove the endpoint works."""
    from msmall.backends.base import PlanOptions
    from msmall.errors import ConfigError

    if pull not in ("never", "missing", "always"):
        raise ConfigError(f"--pull must be never, missing or always, not '{pull}'")
    if check and (detach or no_smoke):
        raise ConfigError("--check runs the smoke checks and stops: drop --detach / --no-smoke")
    options = PlanOptions(
        backend=backend, host=host, port=port, vllm_version=vllm_version, api_key=api_key,
        deployment=name, allow_unauthenticated=allow_unauthenticated,
    )  # fmt: skip
    from msmall.errors import MsmallError

    try:
        _serve(profile, set_, options, dry_run, detach, no_smoke, force, pull, ready_timeout,
               check, as_json)  # fmt: skip
    except MsmallError as exc:
        if as_json:
            # Scripts read stdout: a failure is a JSON object there too (the text goes to stderr).
            print_json(
                {
                    "ok": False,
                    "error": {
                        "kind": type(exc).__name__,
                        "message": exc.message,
                        "fix": exc.fix,
                        "details": exc.details,
                        "exit_code": exc.exit_code,
                    },
                }
            )
        raise


def _serve(profile, set_, options, dry_run, detach, no_smoke, force, pull, ready_timeout,
           check, as_json) -> None:  # fmt: skip
    if dry_run:
        _dry_run(profile, set_, options, force, as_json)
        return
    from msmall.cli.serve_view import make_reporter
    from msmall.launcher import ServeRequest
    from msmall.launcher import serve as run_serve

    reporter = make_reporter(as_json)
    try:
        result = run_serve(
            ServeRequest(
                profile=profile, overrides=set_ or [], options=options, detach=detach,
                smoke=not no_smoke, force=force, pull=pull, json_output=as_json,
                ready_timeout_s=ready_timeout, check_only=check,
            ),
            reporter,
        )  # fmt: skip
    finally:
        reporter.close()
    if as_json:
        print_json(result)


def _dry_run(
    profile_ref: Optional[str], set_: Optional[list[str]], options, force: bool, as_json: bool
) -> None:
    """The plan `serve` would run, decided the same way (same preflight, same refusals)."""
    from msmall.launcher import final_plan
    from msmall.plan import render_command

    plan = final_plan(profile_ref, set_ or [], options, force=force)
    if as_json:
        print_json(plan.to_public_dict())
        return
    for note in plan.notes:
        err().print(f"# {note}", markup=False, style="dim")
    for warning in plan.warnings:
        err().print(f"warning: {warning}", markup=False, style="yellow")
    out().print(
        f"# profile {plan.profile}, backend {plan.backend}"
        + (f", vLLM {plan.engine_version}" if plan.engine_version else ""),
        markup=False,
    )
    if plan.container is not None:
        out().print(plan.docker_run(), markup=False)
    else:
        out().print(render_command(plan.argv, plan.env), markup=False)
    if plan.pull_model:
        out().print(
            f"# then msmall pulls and preloads {plan.pull_model} through the Ollama API",
            markup=False,
        )
    out().print(
        f"# OpenAI base URL: {plan.openai_base_url}  model: {plan.served_model_name}", markup=False
    )
