"""`msmall export TARGET`: the plan `serve` would run, as files for compose, Kubernetes, the vLLM
production-stack chart, systemd or multi-node vLLM (the core is msmall.export)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from msmall.backends import backend_names
from msmall.cli.output import err

TARGETS = "compose | k8s | helm | systemd | multinode"


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    target: str = typer.Argument(..., help=TARGETS),
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="Profile name or YAML path."
    ),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a profile setting (repeatable)."
    ),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help=f"{' | '.join(backend_names())} (default: the profile's)."
    ),
    replicas: int = typer.Option(1, "--replicas", help="k8s / helm: replicas behind the Service."),
    output: Optional[str] = typer.Option(
        None, "-o", "--output", help="Directory to write the files to; '-' (default): stdout."
    ),
    host: Optional[str] = typer.Option(
        None, "--host", help="Address to publish on (default 127.0.0.1)."
    ),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: the backend's)."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="MSMALL_API_KEY",
        show_envvar=True,
        help="Require an API key; the files reference it by name, never by value.",
    ),
    vllm_version: Optional[str] = typer.Option(
        None, "--vllm-version", help="Generate flags for this vLLM (default: the newest known)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: profile)."),
    allow_unauthenticated: bool = typer.Option(
        False,
        "--allow-unauthenticated",
        help="Let an engine without authentication (Ollama) publish beyond 127.0.0.1.",
    ),
    download_init: bool = typer.Option(
        False, "--download-init", help="k8s: an init container downloads the weights first."
    ),
    image: Optional[str] = typer.Option(None, "--image", help="Replace the container image."),
    head_address: Optional[str] = typer.Option(
        None, "--head-address", help="multinode: node 0's address (default: $HEAD_IP at run time)."
    ),
) -> None:
    """Write the plan `msmall serve` runs as files another system runs (secrets by name only)."""
    from msmall.backends.base import PlanOptions
    from msmall.export import ExportOptions, build, stream, write_files

    options = PlanOptions(
        backend=backend, host=host, port=port, vllm_version=vllm_version, api_key=api_key,
        deployment=name, allow_unauthenticated=allow_unauthenticated,
    )  # fmt: skip
    result, plan = build(
        target,
        profile,
        set_ or [],
        options,
        ExportOptions(
            replicas=replicas, download_init=download_init, image=image, head_address=head_address
        ),
    )
    for warning in plan.warnings:
        err().print(f"warning: {warning}", markup=False, style="yellow")
    if output in (None, "-"):
        sys.stdout.write(stream(result.files))
        sys.stdout.flush()
    else:
        for path in write_files(Path(output), result.files):
            print(path)
    for line in result.instructions:
        err().print(f"# {line}", markup=False)
