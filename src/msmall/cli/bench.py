"""`msmall bench`: a thin command over msmall.bench (imported only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _ints(text: str) -> list[int]:
    from msmall.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--concurrency {text!r}: use whole numbers, e.g. 1,4,16,64") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--concurrency {text!r}: every level must be at least 1")
    return values


def _floats(text: str) -> list[float]:
    from msmall.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--rate {text!r}: use requests per second, e.g. 2 or 1,2,4") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"--rate {text!r}: every rate must be above 0")
    return values


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _ms(stats: dict[str, float] | None, key: str) -> str:
    return "-" if not stats else f"{stats[key] * 1000:.1f}"


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    from msmall.cli.output import err, out

    target = result["target"]
    engine = (
        f"{target.get('engine')} {target.get('engine_version')}" if target.get("engine") else "?"
    )
    out().print(f"{target['url']}  model {target['model']}  engine {engine}")
    by_rate = result.get("load") == "rate"
    table = Table(show_edge=False)
    for col in (
        "rate (got)" if by_rate else "conc",
        "req",
        "err",
        "TTFT p50/p99 ms",
        "TPOT p50/p99 ms",
        "ITL p99 ms",
        "e2e p50 s",
        "tok/s",
        "req/s",
        "tools OK",
        "vision OK",
        "goodput",
        "client",
    ):
        table.add_column(col, justify="right")
    for lv in result["levels"]:
        client = lv["client"]
        load = (
            f"{lv['rate']:g} ({lv['achieved_rate']:.2f})"
            if by_rate and lv.get("achieved_rate")
            else str(lv.get("rate") if by_rate else lv["concurrency"])
        )
        e2e = lv.get("e2e_s")
        table.add_row(
            load,
            str(lv["requests"]),
            str(sum(lv["errors"].values())),
            f"{_ms(lv['ttft_s'], 'p50')}/{_ms(lv['ttft_s'], 'p99')}",
            f"{_ms(lv['tpot_s'], 'p50')}/{_ms(lv['tpot_s'], 'p99')}",
            _ms(lv["itl_s"], "p99"),
            "-" if not e2e else f"{e2e['p50']:.2f}",
            f"{lv['output_tokens_per_s']:.0f}",
            f"{lv['requests_per_s']:.2f}",
            _pct(lv["tool_call_ok_rate"]),
            _pct(lv["vision_ok_rate"]),
            "-" if lv["goodput_rps"] is None else f"{lv['goodput_rps']:.2f}",
            f"{client['cpu_percent']:.0f}% cpu, lag {client['loop_lag_p99_s'] * 1000:.1f} ms"
            + (" !" if client["bottleneck"] else ""),
        )
    out().print(table)
    for lv in result["levels"]:
        name = f"rate {lv['rate']:g}" if by_rate else f"concurrency {lv['concurrency']}"
        if lv["errors"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in lv["errors"].items())
            err().print(f"{name}: errors {kinds}", style="yellow")
        for warning in lv["warnings"]:
            err().print(f"warning ({name}): {warning}", style="yellow")


def _render_compare(data: dict[str, Any]) -> None:
    from rich.table import Table

    from msmall.cli.output import out

    out().print(f"A = {data['a']}   B = {data['b']}")
    for lv in data["levels"]:
        key = "rate" if "rate" in lv else "concurrency"
        table = Table(title=f"{key} {lv[key]}", show_edge=False)
        for col in ("metric", "A", "B", "change"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for row in lv["metrics"]:
            change = "-" if row["change_pct"] is None else f"{row['change_pct']:+.1f}%"
            style = {True: "green", False: "red"}.get(row["better"], "")
            table.add_row(
                row["metric"],
                f"{row['a']:.4g}",
                f"{row['b']:.4g}",
                f"[{style}]{change}[/]" if style else change,
            )
        out().print(table)


def bench(
    target: Optional[str] = typer.Argument(
        None, help="A deployment name (see `msmall ps`) or a base URL, e.g. http://127.0.0.1:8000."
    ),
    concurrency: str = typer.Option(
        "1,4,16,64", "--concurrency", "-c", help="Closed-loop levels (users at once)."
    ),
    rate: Optional[str] = typer.Option(
        None, "--rate", help="Open-loop Poisson arrivals per second (one or more, comma-separated)."
    ),
    duration: Optional[float] = typer.Option(
        None, "--duration", help="Seconds measured per level (after warm-up)."
    ),
    requests: Optional[int] = typer.Option(
        None, "--requests", "-n", help="Requests measured per level (default 64; 32 with --rate)."
    ),
    mix: str = typer.Option(
        "chat=100", "--mix", help="Request kinds and weights, e.g. chat=70,tools=20,vision=10."
    ),
    input_tokens: int = typer.Option(128, "--input-tokens", help="Words in each chat prompt."),
    output_tokens: int = typer.Option(
        128, "--output-tokens", help="max_tokens (with ignore_eos) of chat requests."
    ),
    slo: Optional[str] = typer.Option(
        None, "--slo", help="Goodput limits in seconds, e.g. ttft=0.5,tpot=0.05."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model name (default: the first listed)."
    ),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="MSMALL_API_KEY", show_envvar=True
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompts and the arrival times."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON result only."),
    save: bool = typer.Option(False, "--save", help="Keep the result in the history (state dir)."),
    history: bool = typer.Option(False, "--history", help="List saved runs and exit."),
    compare: Optional[tuple[str, str]] = typer.Option(
        None, "--compare", help="Compare two saved runs (ids or JSON files) and exit."
    ),
    plot_file: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG plot of the run (needs msmall[plot])."
    ),
) -> None:
    """Load an endpoint at several concurrency levels (or rates) and report latency, throughput,
    tool-call and vision correctness, with a client that watches its own lag."""
    from msmall.bench import results
    from msmall.cli.output import err, print_json
    from msmall.errors import ConfigError

    if history:
        rows = results.history()
        if as_json:
            print_json(rows)
            return
        if not rows:
            err().print("no saved runs (use --save)")
        for row in rows:
            typer.echo(
                f"{row['id']}  {row['url']}  {row['model']}  {row['load']} {row['levels']}  "
                f"best {row['best_output_tokens_per_s']:.0f} tok/s"
            )
        return
    if compare:
        data = results.compare(results.load(compare[0]), results.load(compare[1]))
        if as_json:
            print_json(data)
        else:
            _render_compare(data)
        return

    from msmall.bench import metrics, workload
    from msmall.bench.session import BenchOptions, run_bench

    try:
        mix_weights = workload.parse_mix(mix)
        slo_limits = metrics.parse_slo(slo) if slo else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if requests is not None and requests < 1:
        raise ConfigError("--requests must be at least 1")
    if duration is not None and duration <= 0:
        raise ConfigError("--duration must be above 0")
    opts = BenchOptions(
        target=target,
        concurrency=_ints(concurrency),
        rate=_floats(rate) if rate else None,
        requests=requests,
        duration_s=duration,
        mix=mix_weights,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        slo=slo_limits,
        api_key=api_key,
        model=model,
        seed=seed,
    )
    show = not as_json and err().is_terminal
    if show:
        from rich.progress import Progress

        with Progress(console=err(), transient=True) as bar:
            tasks: dict[int, Any] = {}

            def on_progress(spec, done, total):
                key = id(spec)
                if key not in tasks:
                    label = (
                        f"rate {spec.rate:g}" if spec.rate else f"concurrency {spec.concurrency}"
                    )
                    tasks[key] = bar.add_task(label, total=total)
                bar.update(tasks[key], completed=done)

            result = run_bench(opts, on_progress=on_progress)
    else:
        result = run_bench(opts)
    if save:
        path = results.save(result)
        if not as_json:
            err().print(f"saved {result['id']} ({path})")
    if plot_file is not None:
        from msmall.bench.plot import plot

        plot(result, plot_file)
        if not as_json:
            err().print(f"plot written to {plot_file}")
    if as_json:
        print_json(result)
    else:
        _render(result)
