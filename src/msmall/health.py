"""Staged readiness and smoke probes over httpx.

Readiness: connection refused means "still loading" (vLLM does not listen until its engine is
up); then /health (vLLM) or `GET /` + /api/version (Ollama); then /v1/models lists the served
name. Smoke: chat (plain and streaming), a real tool call, and an image when vision is on.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from msmall.errors import EndpointUnhealthy
from msmall.models import MODELS

# Every model msmall knows is sampled at the same temperature (its model card: 0.15).
RECOMMENDED_TEMPERATURE = min(spec.recommended_temperature for spec in MODELS.values())

if TYPE_CHECKING:
    import httpx

# Poll often: readiness must be noticed within a fraction of a second of the endpoint answering.
POLL_INTERVAL_S = 0.025
PROBE_TIMEOUT_S = 2.0
# Smoke requests generate a few tokens; a cold first request can still take a while on big GPUs.
SMOKE_TIMEOUT_S = 120.0

# Bounds on what a server can make msmall read or wait for (a dripping server, a gzip bomb, a
# stream that never ends): each probe or check ends in a plain failure within these.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STREAM_EVENTS = 2048
SMOKE_DEADLINE_S = SMOKE_TIMEOUT_S
PROBE_DEADLINE_S = 5.0

TOOL_FIX = "Serve with --tool-call-parser mistral --enable-auto-tool-choice (msmall's profiles do: --set tools=true)."
SYSTEM_PROMPT = "You are a concise assistant."


@dataclass
class ProbeState:
    stage: str  # "refused" | "starting" | "unhealthy" | "no-model" | "ready"
    detail: str = ""


@dataclass
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    detail: str = ""
    fix: str | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SmokeReport:
    base_url: str
    model: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.skipped for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


# The colour of the square in tiny_png(): an answer that does not name it ignored the image.
SQUARE_COLOUR = "red"


def tiny_png(size: int = 56) -> bytes:
    """A small, valid RGB PNG (red square on a white margin): enough for a real vision request.

    The square covers most of the picture so that its colour is also the dominant (and mean) one.
    """
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type 0
        for x in range(size):
            m = size // 28  # a thin white margin
            inside = m <= x < size - m and m <= y < size - m
            row += bytes((220, 30, 30) if inside else (255, 255, 255))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(tiny_png()).decode()


_ESCAPES = None


def clean(text: str, limit: int = 300) -> str:
    """Server text made safe to print: terminal escape sequences and control characters gone
    (a hostile server could otherwise retitle the terminal or hide lines), length bounded."""
    import re

    global _ESCAPES
    if _ESCAPES is None:
        _ESCAPES = re.compile(
            r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
        )
    return _ESCAPES.sub("", str(text))[:limit]


def public_url(url: str) -> str:
    """The URL without user:password (never echoed)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Bounded:
    """Wraps an httpx.Client: every request reads at most MAX_BODY_BYTES within a total
    deadline (httpx's timeout is per read, so a server dripping a byte a second never trips it)."""

    def __init__(self, client: httpx.Client, deadline_s: float) -> None:
        self._client = client
        self.deadline_s = deadline_s

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        import httpx

        deadline = time.monotonic() + self.deadline_s
        with self._client.stream(method, url, **kw) as resp:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ValueError(f"the answer is larger than {MAX_BODY_BYTES // 1024} KiB")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no complete answer within {self.deadline_s:.0f} s")
            headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-encoding"}
            return httpx.Response(
                resp.status_code, headers=headers, content=bytes(body), request=resp.request
            )

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def stream(self, method: str, url: str, **kw: Any):
        return self._client.stream(method, url, **kw)


def _client(base_url: str, api_key: str | None, timeout: float) -> _Bounded:
    from msmall.httpclient import new_client

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # Ask for no compression: a gzip bomb then has to be sent against the request (and is still
    # capped after decoding).
    headers["Accept-Encoding"] = "identity"
    inner = new_client(base_url, headers=headers, timeout=timeout)
    deadline = PROBE_DEADLINE_S if timeout <= PROBE_TIMEOUT_S * 5 else SMOKE_DEADLINE_S
    return _Bounded(inner, max(deadline, timeout))


def probe(client: httpx.Client, flavor: str, model: str | None) -> ProbeState:
    """One look at the endpoint: how far along is it?"""
    import httpx

    try:
        if flavor == "ollama":
            root = client.get("/")
            if root.status_code != 200 or "Ollama is running" not in root.text:
                return ProbeState("starting", f"GET / answered {root.status_code}")
            client.get("/api/version").raise_for_status()
            if model is None:
                return ProbeState("ready")
        else:
            health = client.get("/health")
            if health.status_code == 503:
                return ProbeState("unhealthy", "/health answered 503 (engine not running)")
            if health.status_code != 200:
                return ProbeState("starting", f"/health answered {health.status_code}")
        models = client.get("/v1/models")
        if models.status_code == 401:
            return ProbeState("unhealthy", "/v1/models needs an API key (401): pass --api-key")
        if models.status_code != 200:
            return ProbeState("starting", f"/v1/models answered {models.status_code}")
        ids = [m.get("id") for m in models.json().get("data", [])]
        if model and model not in ids:
            return ProbeState("no-model", clean(f"/v1/models lists {ids}, not {model!r}"))
        return ProbeState("ready")
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return ProbeState("refused")
    except httpx.TimeoutException:
        return ProbeState("starting", "probe timed out")
    except (ValueError, TypeError, AttributeError, httpx.HTTPError) as exc:
        return ProbeState("starting", clean(str(exc)))


def wait_ready(
    base_url: str,
    flavor: str,
    model: str | None,
    *,
    api_key: str | None = None,
    alive: Callable[[], bool] = lambda: True,
    on_tick: Callable[[ProbeState], None] | None = None,
    timeout_s: float | None = None,
    unhealthy_grace_s: float = 30.0,
) -> float:
    """Block until the endpoint serves `model`; return seconds waited.

    Fails at once when `alive()` turns false (the process died). `timeout_s=None` waits as long as
    the process lives: a first download of 48 GB can take an hour, and a fixed short limit is the
    classic false alarm.
    """
    start = time.monotonic()
    unhealthy_since: float | None = None
    with _client(base_url, api_key, PROBE_TIMEOUT_S) as client:
        while True:
            if not alive():
                raise EndpointUnhealthy("the server process exited before it was ready")
            state = probe(client, flavor, model)
            now = time.monotonic()
            if on_tick:
                on_tick(state)
            if state.stage == "ready":
                return now - start
            if state.stage in ("unhealthy", "no-model"):
                unhealthy_since = unhealthy_since or now
                if now - unhealthy_since > unhealthy_grace_s:
                    raise EndpointUnhealthy(
                        f"the server answers but is not serving: {state.detail}"
                    )
            else:
                unhealthy_since = None
            if timeout_s is not None and now - start > timeout_s:
                raise EndpointUnhealthy(
                    f"not ready after {timeout_s:.0f} s ({state.stage}: {state.detail or 'no answer'})",
                    "Raise --ready-timeout, or look at `msmall logs` for what the engine is doing.",
                )
            time.sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------------------------------------
# Smoke checks


def _timed(fn: Callable[[], CheckResult]) -> CheckResult:
    import httpx

    start = time.perf_counter()
    try:
        result = fn()
    except httpx.HTTPError as exc:
        result = CheckResult("?", False, 0.0, f"request failed: {exc}")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # The server answered 200 with something that is not an OpenAI response.
        result = CheckResult("?", False, 0.0, f"malformed response: {exc!r}"[:200])
    result.detail = clean(result.detail)
    result.latency_ms = round((time.perf_counter() - start) * 1000, 1)
    return result


def _error_text(resp: httpx.Response) -> str:
    return _error_message(resp.text)


def _error_message(text: str) -> str:
    """The message of an OpenAI-style error body (`{"error": {"message": ...}}`), else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def check_chat(client: httpx.Client, model: str) -> CheckResult:
    def run() -> CheckResult:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": _messages("Reply with the single word: ready"),
                "temperature": RECOMMENDED_TEMPERATURE,
                "max_tokens": 8,
            },
        )
        if resp.status_code != 200:
            return CheckResult("chat", False, 0, f"HTTP {resp.status_code}: {_error_text(resp)}")
        content = resp.json()["choices"][0]["message"].get("content") or ""
        if not content.strip():
            return CheckResult("chat", False, 0, "empty answer")
        return CheckResult("chat", True, 0, f"answered {content.strip()[:40]!r}")

    result = _timed(run)
    result.name = "chat"
    return result


def check_stream(client: httpx.Client, model: str) -> CheckResult:
    def run() -> CheckResult:
        start = time.perf_counter()
        first_token_ms: float | None = None
        pieces: list[str] = []
        done = False
        body = {
            "model": model,
            "messages": _messages("Count from 1 to 5."),
            "temperature": RECOMMENDED_TEMPERATURE,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        deadline = time.monotonic() + getattr(client, "deadline_s", SMOKE_DEADLINE_S)
        events = 0
        read = 0
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                head = b""
                for chunk in resp.iter_bytes():
                    head += chunk
                    if len(head) > 64 * 1024 or time.monotonic() > deadline:
                        break
                return CheckResult(
                    "stream",
                    False,
                    0,
                    f"HTTP {resp.status_code}: "
                    f"{clean(_error_message(head.decode('utf-8', 'replace')))}",
                )
            for line in _lines_within(resp, deadline):
                read += len(line) + 1
                if time.monotonic() > deadline:
                    return CheckResult("stream", False, 0, "the stream did not end in time")
                if read > MAX_BODY_BYTES:
                    return CheckResult("stream", False, 0, "the stream sent too much data")
                if not line.startswith("data:"):
                    continue
                events += 1
                if events > MAX_STREAM_EVENTS:
                    return CheckResult(
                        "stream", False, 0, f"the stream sent more than {MAX_STREAM_EVENTS} events"
                    )
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first_token_ms is None:
                            first_token_ms = (time.perf_counter() - start) * 1000
                        pieces.append(text)
        if not pieces:
            return CheckResult("stream", False, 0, "the stream carried no text")
        if not done:
            return CheckResult("stream", False, 0, "the stream ended without [DONE]")
        return CheckResult(
            "stream", True, 0, f"{len(pieces)} chunks, first token after {first_token_ms:.0f} ms"
        )

    def bounded() -> CheckResult:
        try:
            return run()
        except _StreamLimit as exc:
            return CheckResult("stream", False, 0, str(exc))

    result = _timed(bounded)
    result.name = "stream"
    return result


class _StreamLimit(Exception):
    pass


def _lines_within(resp: httpx.Response, deadline: float):
    """Lines of a streamed body, checking the deadline and size on every chunk: iter_lines waits
    for a newline, which a hostile server never has to send."""
    buf = b""
    total = 0
    for chunk in resp.iter_bytes():
        buf += chunk
        total += len(chunk)
        if time.monotonic() > deadline:
            raise _StreamLimit("the stream did not end in time")
        if total > MAX_BODY_BYTES:
            raise _StreamLimit("the stream sent too much data")
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if buf:
        yield buf.decode("utf-8", "replace")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


def check_tools(client: httpx.Client, model: str, flavor: str = "vllm") -> CheckResult:
    fix = (
        TOOL_FIX
        if flavor == "vllm"
        else ("Use a model tag with the tools capability (mistral-small3.1 on Ollama >= 0.6.5).")
    )

    def run() -> CheckResult:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": _messages("What is the weather in Paris right now? Use the tool."),
                "tools": [WEATHER_TOOL],
                "tool_choice": "auto",
                "temperature": RECOMMENDED_TEMPERATURE,
                "max_tokens": 64,
            },
        )
        if resp.status_code != 200:
            return CheckResult(
                "tools", False, 0, f"HTTP {resp.status_code}: {_error_text(resp)}", fix
            )
        message = resp.json()["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if not calls:
            content = (message.get("content") or "").strip()
            looks_like_call = "[TOOL_CALLS]" in content or '"name"' in content
            detail = (
                "the tool call came back as text, not tool_calls"
                if looks_like_call
                else "no tool_calls in the answer"
            )
            return CheckResult("tools", False, 0, f"{detail}: {content[:80]!r}", fix)
        fn = calls[0].get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "")
        except (TypeError, ValueError):
            return CheckResult(
                "tools", False, 0, f"tool_call arguments are not JSON: {fn.get('arguments')!r}", fix
            )
        if not isinstance(args, dict):
            return CheckResult(
                "tools", False, 0, f"tool_call arguments are not an object: {args!r}", fix
            )
        return CheckResult("tools", True, 0, f"{fn.get('name')}({json.dumps(args)})")

    result = _timed(run)
    result.name = "tools"
    return result


def check_vision(client: httpx.Client, model: str) -> CheckResult:
    fix = "Serve with vision on (--set vision=true; vLLM: --limit-mm-per-prompt '{\"image\":1}' or more)."

    def run() -> CheckResult:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What colour is the square? One word."},
                            {"type": "image_url", "image_url": {"url": png_data_url()}},
                        ],
                    },
                ],
                "temperature": RECOMMENDED_TEMPERATURE,
                "max_tokens": 32,  # room for "The image is ... mostly red." from chatty servers
            },
        )
        if resp.status_code != 200:
            return CheckResult(
                "vision", False, 0, f"HTTP {resp.status_code}: {_error_text(resp)}", fix
            )
        content = resp.json()["choices"][0]["message"].get("content") or ""
        if not content.strip():
            return CheckResult("vision", False, 0, "empty answer to an image", fix)
        if SQUARE_COLOUR not in content.lower():
            return CheckResult(
                "vision",
                False,
                0,
                f"the answer does not name the colour of the image ({SQUARE_COLOUR}), so the"
                f" image was ignored: {content.strip()[:60]!r}",
                fix,
            )
        return CheckResult("vision", True, 0, f"answered {content.strip()[:40]!r}")

    result = _timed(run)
    result.name = "vision"
    return result


def first_model(base_url: str, api_key: str | None = None) -> str:
    import httpx

    shown = public_url(base_url)
    with _client(base_url, api_key, PROBE_TIMEOUT_S * 5) as client:
        try:
            resp = client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise EndpointUnhealthy(
                f"cannot reach {shown}: {clean(str(exc).replace(base_url, shown))}",
                "Check the URL and that the server is running.",
            ) from None
        except ValueError as exc:
            raise EndpointUnhealthy(f"{shown}/v1/models: {clean(str(exc))}") from None
        if resp.status_code == 401:
            raise EndpointUnhealthy(
                f"{shown}/v1/models needs an API key (HTTP 401)", "Pass --api-key."
            )
        if resp.status_code != 200:
            raise EndpointUnhealthy(f"{shown}/v1/models answered HTTP {resp.status_code}")
        try:
            data = resp.json().get("data") or []
            name = data[0]["id"] if data else None
        except (ValueError, AttributeError, KeyError, IndexError, TypeError):
            raise EndpointUnhealthy(
                f"{shown}/v1/models is not an OpenAI model list",
                "Check that the URL is an OpenAI-compatible server.",
            ) from None
        if not name or not isinstance(name, str):
            raise EndpointUnhealthy(
                f"{shown}/v1/models lists no model", "Load or pull a model first."
            )
        return clean(name, 200)


def smoke(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    tools: bool = True,
    vision: bool = True,
    flavor: str = "vllm",
    on_result: Callable[[CheckResult], None] | None = None,
    timeout_s: float = SMOKE_TIMEOUT_S,
) -> SmokeReport:
    """Run the checks one after another; every check runs even when an earlier one fails."""
    report = SmokeReport(base_url=public_url(base_url), model=model)
    with _client(base_url, api_key, timeout_s) as client:
        client.deadline_s = timeout_s
        checks: list[Callable[[], CheckResult]] = [
            lambda: check_chat(client, model),
            lambda: check_stream(client, model),
        ]
        checks.append(
            (lambda: check_tools(client, model, flavor))
            if tools
            else (lambda: CheckResult("tools", False, 0, "not requested", skipped=True))
        )
        checks.append(
            (lambda: check_vision(client, model))
            if vision
            else (lambda: CheckResult("vision", False, 0, "not requested", skipped=True))
        )
        for check in checks:
            result = check()
            report.checks.append(result)
            if on_result:
                on_result(result)
    return report
