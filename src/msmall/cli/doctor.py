"""`msmall doctor`: can this machine run Mistral Small 3.1, and with which profile?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from msmall.backends import backend_names
from msmall.cli.output import err, out, print_json, status_style

if TYPE_CHECKING:
    from msmall.doctor import DoctorReport


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    profile: Optional[str] = typer.Option(
        None,
        "--profile",
        "-p",
        help="Check this profile (name or YAML path); exit 3 if it cannot run here.",
    ),
    backend: Optional[str] = typer.Option(
        None,
        "--backend",
        "-b",
        help=f"With --profile: {' | '.join(backend_names())}.",
    ),
    set_: Optional[list[str]] = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="With --profile: override a setting, key=value (repeatable).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check GPUs, driver, CUDA, memory, disk, engines, HF token and port; list the profiles that fit."""
    from msmall.doctor import run_doctor
    from msmall.errors import ConfigError

    if (backend or set_) and not profile:
        raise ConfigError("--backend and --set need --profile", "Example: --profile 4090-q4")
    report = run_doctor(profile, backend=backend, overrides=set_ or [])
    if as_json:
        print_json(report.to_dict())
    else:
        _render(report)
    if report.exit_code:
        if not as_json:
            failed = [c.name for c in report.checks if c.status == "fail"]
            what = (
                f"profile {report.profile} cannot run here"
                if report.profile
                else "something is broken"
            )
            reason = f" (failed: {', '.join(failed)})" if failed else " (it does not fit)"
            err().print(f"msmall doctor: {what}{reason}", markup=False, style="red")
        raise typer.Exit(report.exit_code)


def _render(report: DoctorReport) -> None:
    from rich.table import Table
    from rich.text import Text

    console = out()
    if report.gpus:
        gpus = Table(
            title=f"GPUs (driver {report.driver_version or '?'}, CUDA {report.cuda_version or '?'}, "
            f"via {report.gpu_source})",
            title_justify="left",
        )
        for column in ("#", "name", "memory", "free", "compute"):
            gpus.add_column(column, justify="right" if column in ("memory", "free") else "left")
        for g in report.gpus:
            gpus.add_row(
                str(g["index"]),
                g["name"],
                _mib(g["memory_total_mib"]),
                _mib(g["memory_free_mib"]),
                g["compute_capability"] or "?",
            )
        console.print(gpus)
    else:
        console.print(Text(f"No NVIDIA GPU: {report.gpu_problem or 'none listed'}"))

    checks = Table(title="Checks", title_justify="left")
    checks.add_column("status")
    checks.add_column("check")
    checks.add_column("detail", ratio=3)
    checks.add_column("fix", ratio=2)
    for c in report.checks:
        checks.add_row(
            Text(c.status, style=status_style(c.status)),
            c.name,
            Text(c.detail),
            Text(c.fix or ""),
        )
    console.print(checks)

    fits = Table(title="Profiles on this machine", title_justify="left")
    fits.add_column("profile")
    fits.add_column("backend")
    fits.add_column("verdict")
    fits.add_column("max context", justify="right")
    fits.add_column("why", ratio=1)
    for row in report.profiles:
        verdict = Text(row.verdict.replace("_", " "), style=status_style(row.verdict))
        if row.verdict_now is not None:
            verdict.append(f" (now: {row.verdict_now.replace('_', ' ')})", style="dim")
        marks = " *" if row.name == report.recommended_profile else ""
        fits.add_row(
            row.name + marks,
            row.backend,
            verdict,
            f"{row.max_context:,}" if row.max_context else "-",
            Text(row.reason + (f" {row.suggestion}" if row.suggestion else "")),
        )
    console.print(fits)

    if report.recommended_profile:
        console.print(
            Text.assemble(("Recommended: ", "bold"), (report.recommended_profile, "bold green"))
        )
        console.print(Text(f"  {report.recommended_reason}"))
        console.print(Text(f"  msmall serve --profile {report.recommended_profile}"))
    else:
        console.print(Text.assemble(("Recommended: ", "bold"), "none"))
        console.print(Text(f"  {report.recommended_reason}"))
        console.print(Text("  msmall serve --profile demo runs the simulator (no GPU needed)"))


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value:,} MiB"
