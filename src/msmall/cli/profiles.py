"""`msmall profiles list|show|validate`."""

from __future__ import annotations

import typer

from msmall.cli.output import out, print_json

app = typer.Typer(help="List, show and validate hardware profiles.", no_args_is_help=True)

JSON_OPT = typer.Option(False, "--json", help="Print JSON.")


@app.command("list")
def list_profiles(as_json: bool = JSON_OPT) -> None:
    """List the shipped profiles and your own (user config dir)."""
    from msmall.errors import ConfigError
    from msmall.profiles import load_all, profile_to_dict

    loaded = load_all()
    if as_json:
        print_json(
            [
                profile_to_dict(p) if not isinstance(p, ConfigError) else {"error": str(p)}
                for p in loaded
            ]
        )
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("profile", "backend", "needs", "weights", "context", "vision", "tools"):
        table.add_column(col, no_wrap=True)
    table.add_column("about", overflow="fold", ratio=1)
    for p in loaded:
        if isinstance(p, ConfigError):
            from rich.markup import escape

            # escape: the message quotes a file name and its content, which may hold "[...]".
            table.add_row("[red]broken[/]", "", "", "", "", "", "", escape(str(p)))
            continue
        hw, sv = p.hardware, p.serving
        table.add_row(
            p.name,
            p.backend,
            f"{hw.gpu_count} GPU x {hw.min_vram_gib:g} GiB" if hw.gpu_count else "no GPU",
            p.model.weights if p.backend != "ollama" else p.model.ollama_tag.rsplit("-", 1)[-1],
            str(sv.max_model_len),
            f"{sv.images_per_prompt}/prompt" if sv.vision else "off",
            "on" if sv.tools else "off",
            p.description.split(". ")[0].split(": ")[0],
        )
    out().print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Profile name or path to a YAML file."),
    set_: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a setting: key=value."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Show a profile with every inherited and default value resolved."""
    from msmall.profiles import load_profile, parse_set, profile_to_dict

    prof = load_profile(name, parse_set(set_))
    data = profile_to_dict(prof)
    if as_json:
        print_json(data)
        return
    import yaml

    out().print(f"# {data.pop('source')}", markup=False)
    out().print(yaml.safe_dump(data, sort_keys=False).rstrip(), markup=False)


@app.command("validate")
def validate(
    path: str = typer.Argument(..., help="Path to a profile YAML file."),
    as_json: bool = JSON_OPT,
) -> None:
    """Check a profile file and the command it makes; exit 2 with the reason when it is invalid."""
    from msmall.backends import build_plan
    from msmall.backends.base import PlanOptions
    from msmall.errors import ConfigError
    from msmall.profiles import validate_file

    try:
        prof = validate_file(path)
        # A valid schema can still make a command the engine rejects (a removed flag in
        # extra_args, Mistral formats on an HF repo): build the plan too, without probing vllm.
        build_plan(prof, PlanOptions(detect_installed=False))
    except ConfigError as exc:
        if as_json:
            print_json({"valid": False, "path": path, "error": exc.message, "fix": exc.fix})
            raise typer.Exit(ConfigError.exit_code) from None
        raise
    if as_json:
        print_json({"valid": True, "path": path, "name": prof.name, "backend": prof.backend})
        return
    out().print(
        f"ok: {path} is a valid profile ('{prof.name}', backend {prof.backend})", markup=False
    )
