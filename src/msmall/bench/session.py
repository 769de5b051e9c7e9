"""One `msmall bench` run: resolve the target, run the levels, build the JSON result."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msmall import eventloop
from msmall.bench import results, runner, workload
from msmall.bench.client import Connection, HttpError, Target, get_json
from msmall.errors import ConfigError, EndpointUnhealthy

DEFAULT_CONCURRENCY = (1, 4, 16, 64)


@dataclass
class BenchOptions:
    target: str | None = None  # deployment name or URL
    concurrency: list[int] = field(default_factory=lambda: list(DEFAULT_CONCURRENCY))
    rate: list[float] | None = None
    requests: int | None = None
    duration_s: float | None = None
    mix: dict[str, int] = field(default_factory=lambda: {"chat": 100})
    input_tokens: int = 128
    output_tokens: int = 128
    slo: dict[str, float] | None = None
    api_key: str | None = None
    model: str | None = None
    seed: int = 0
    timeout_s: float = runner.REQUEST_TIMEOUT_S


@dataclass
class ResolvedTarget:
    url: str
    api_key: str | None
    deployment: str | None = None
    flavor: str | None = None
    model: str | None = None


def resolve(target: str | None, api_key: str | None) -> ResolvedTarget:
    """A URL as given, or a deployment's recorded base URL (its key from the env it names)."""
    if target and target.startswith(("http://", "https://")):
        return ResolvedTarget(target.rstrip("/"), api_key)
    # Only for a deployment: state imports pydantic (about 0.3 s of CPU), which a bench of a URL
    # never needs.
    from msmall import state

    if target is None:
        deps = state.load_all()
        if len(deps) != 1:
            raise ConfigError(
                "name the deployment or URL to bench",
                "Example: msmall bench http://127.0.0.1:8000 (see `msmall ps` for deployments).",
            )
        dep = deps[0]
    else:
        dep = state.load(target)
        if dep is None:
            raise ConfigError(
                f"'{target}' is neither a URL nor a recorded deployment",
                "Pass a URL (http://host:port) or a name from `msmall ps`.",
            )
    key = api_key
    if key is None:
        # The record never holds the key (state.py): it comes from the environment.
        key = os.environ.get("MSMALL_API_KEY") or os.environ.get("VLLM_API_KEY")
    return ResolvedTarget(
        dep.base_url.rstrip("/"), key, dep.name, dep.flavor, dep.served_model_name
    )


async def describe(target: Target, headers: dict[str, str], model: str | None) -> dict[str, Any]:
    """Model (the first listed when not given), engine and version where the server says."""
    conn = Connection(target, headers)
    try:
        try:
            status, body = await get_json(conn, "/v1/models")
        except HttpError as exc:
            raise EndpointUnhealthy(str(exc), "Check the URL and that the server runs.") from None
        if status == 401:
            raise EndpointUnhealthy(
                "the endpoint needs an API key (HTTP 401)", "Pass --api-key (or MSMALL_API_KEY)."
            )
        if status != 200 or not isinstance(body, dict):
            raise EndpointUnhealthy(f"/v1/models answered HTTP {status}")
        ids = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict)]
        if model is None:
            if not ids:
                raise EndpointUnhealthy("/v1/models lists no model", "Load or pull a model first.")
            model = ids[0]
        engine, version = None, None
        for path, name in (("/version", "vllm"), ("/api/version", "ollama")):
            try:
                status, info = await get_json(conn, path, timeout=3.0)
            except HttpError:
                continue
            if status == 200 and isinstance(info, dict) and info.get("version"):
                engine, version = name, str(info["version"])
                break
        return {"model": model, "engine": engine, "engine_version": version}
    finally:
        conn.close()


def level_specs(opts: BenchOptions) -> list[runner.LevelSpec]:
    if opts.requests is None and opts.duration_s is None:
        opts.requests = 64 if opts.rate is None else 32
    if opts.rate:
        return [
            runner.LevelSpec(rate=r, requests=opts.requests, duration_s=opts.duration_s)
            for r in opts.rate
        ]
    return [
        runner.LevelSpec(concurrency=c, requests=opts.requests, duration_s=opts.duration_s)
        for c in opts.concurrency
    ]


OnLevel = Callable[[runner.LevelSpec, int, int | None], None]


def run_bench(
    opts: BenchOptions,
    on_progress: OnLevel | None = None,
    on_level_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    resolved = resolve(opts.target, opts.api_key)
    try:
        target = Target.from_url(resolved.url)
    except ValueError as exc:
        raise ConfigError(str(exc), "Example: msmall bench http://127.0.0.1:8000") from None
    headers = {"Authorization": f"Bearer {resolved.api_key}"} if resolved.api_key else {}
    specs = level_specs(opts)
    return eventloop.run(_run(opts, resolved, target, headers, specs, on_progress, on_level_done))


async def _run(opts, resolved, target, headers, specs, on_progress, on_level_done):
    info = await describe(target, headers, opts.model or resolved.model)
    started = time.time()
    work = workload.Workload(
        info["model"], opts.mix, opts.input_tokens, opts.output_tokens, seed=opts.seed
    )
    bench = runner.Runner(target, work, headers, seed=opts.seed, timeout_s=opts.timeout_s)
    levels = []
    for spec in specs:

        def progress(done: int, total: int | None, spec=spec) -> None:
            if on_progress:
                on_progress(spec, done, total)

        outcome = await bench.run_level(spec, progress)
        level = runner.level_json(outcome, opts.slo)
        levels.append(level)
        if on_level_done:
            on_level_done(level)
    from msmall import __version__

    return {
        "version": results.RESULT_VERSION,
        "msmall_version": __version__,
        "target": {
            "url": resolved.url,
            "deployment": resolved.deployment,
            **info,
        },
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "started_at_unix": started,
        "load": "rate" if opts.rate else "concurrency",
        "options": {
            "requests_per_level": opts.requests,
            "duration_s": opts.duration_s,
            "mix": opts.mix,
            "input_tokens": opts.input_tokens,
            "output_tokens": opts.output_tokens,
            "slo": opts.slo,
            "seed": opts.seed,
        },
        "levels": levels,
    }
