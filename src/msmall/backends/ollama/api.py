"""The parts of Ollama's native API that msmall needs: pull, preload, ps, show.

Ollama reports pull errors as an `{"error": ...}` line AFTER HTTP 200, and its own memory
estimate for this model is known to be off (ollama issues 10177, 10167, 10553): /api/ps after
loading is the truth about how much of the model sits in VRAM.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msmall.errors import EndpointUnhealthy, EngineUnavailable

PULL_TIMEOUT_S = None  # a 15-48 GB pull takes as long as it takes; the stream shows progress


@dataclass
class PullProgress:
    status: str
    total: int | None = None
    completed: int | None = None
    digest: str | None = None


def _client(base_url: str, timeout: float | None):
    import httpx

    from msmall.httpclient import new_client

    return new_client(base_url, timeout=httpx.Timeout(timeout, connect=5.0))


def is_ollama(base_url: str) -> bool:
    import httpx

    try:
        with _client(base_url, 1.0) as client:
            resp = client.get("/")
            return resp.status_code == 200 and "Ollama is running" in resp.text
    except httpx.HTTPError:
        return False


def has_model(base_url: str, model: str) -> bool:
    with _client(base_url, 10.0) as client:
        resp = client.get("/api/tags")
        resp.raise_for_status()
        names = {m.get("name") for m in resp.json().get("models", [])} | {
            m.get("model") for m in resp.json().get("models", [])
        }
    return model in names or (":" not in model and f"{model}:latest" in names)


def pull(
    base_url: str, model: str, on_progress: Callable[[PullProgress], None] | None = None
) -> None:
    import httpx

    try:
        with (
            _client(base_url, PULL_TIMEOUT_S) as client,
            client.stream("POST", "/api/pull", json={"model": model, "stream": True}) as resp,
        ):
            if resp.status_code != 200:
                resp.read()
                raise EngineUnavailable(
                    f"ollama pull {model} failed: HTTP {resp.status_code} {resp.text[:200]}"
                )
            last_status = ""
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                item: dict[str, Any] = json.loads(line)
                if "error" in item:
                    raise EngineUnavailable(
                        f"ollama pull {model} failed: {item['error']}",
                        "Check the model tag (`msmall profiles show`), your network, and disk space.",
                    )
                last_status = item.get("status", last_status)
                if on_progress:
                    on_progress(
                        PullProgress(
                            last_status,
                            item.get("total"),
                            item.get("completed"),
                            item.get("digest"),
                        )
                    )
            if last_status != "success":
                raise EngineUnavailable(
                    f"ollama pull {model} ended without success (last: {last_status!r})"
                )
    except httpx.HTTPError as exc:
        raise EngineUnavailable(f"ollama pull {model} failed: {exc}") from None


def preload(base_url: str, model: str) -> None:
    """Load the model now and keep it loaded (keep_alive -1), so the first request is not slow."""
    with _client(base_url, None) as client:
        resp = client.post("/api/generate", json={"model": model, "keep_alive": -1})
        if resp.status_code != 200:
            raise EndpointUnhealthy(
                f"Ollama could not load {model}: HTTP {resp.status_code} {resp.text[:300]}"
            )


def loaded(base_url: str, model: str) -> dict[str, Any] | None:
    with _client(base_url, 10.0) as client:
        resp = client.get("/api/ps")
        resp.raise_for_status()
        for entry in resp.json().get("models", []):
            if model in (entry.get("name"), entry.get("model")):
                return entry
    return None


def capabilities(base_url: str, model: str) -> list[str]:
    with _client(base_url, 30.0) as client:
        resp = client.post("/api/show", json={"model": model})
        resp.raise_for_status()
        return list(resp.json().get("capabilities") or [])


def offload_warning(entry: dict[str, Any]) -> str | None:
    """Plain words when part of the model runs on the CPU."""
    size, vram = entry.get("size") or 0, entry.get("size_vram") or 0
    if not size or vram >= size:
        return None
    gib = 1024**3
    pct = 100 * (size - vram) / size
    return (
        f"only {vram / gib:.1f} of {size / gib:.1f} GiB is on the GPU: {pct:.0f}% of the model "
        f"({(size - vram) / gib:.1f} GiB) runs on the CPU and will be many times slower. "
        "Lower the context (--set max_model_len=16384), use a smaller quantization, or free GPU memory."
    )
