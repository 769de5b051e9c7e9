"""Ollama's native API: /api/pull, /api/generate (preload, unload, generate), /api/chat.

Ollama loads a model on first use (the simulator's startup delay is that load time), keeps it
for keep_alive, and reports errors as ``{"error": "..."}``; a pull reports them as a line of
an NDJSON stream that already answered HTTP 200.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from msmall.models import MISTRAL_SMALL_3_1 as m
from msmall.simulator import generation as gen
from msmall.simulator.chat import structured_format
from msmall.simulator.images import ImageError, inspect_image
from msmall.simulator.state import (
    OLLAMA_REGISTRY,
    SMALL_LAYERS,
    LoadedModel,
    SimState,
    digest_of,
    go_time,
    keep_alive_seconds,
    known_tag,
    normalise_tag,
)

NO_IMAGE_SUPPORT = "this model is missing data required for image input"
PULL_MANIFEST_ERROR = "pull model manifest: file does not exist"


def not_found_message(name: str) -> str:
    return f'model "{name}" not found, try pulling it first'


def api_error(message: str, status: int) -> JSONResponse:
    """Ollama's native error body: ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def model_field(body: dict[str, Any]) -> str:
    return str(body.get("model") or body.get("name") or "")


async def ensure_loaded(state: SimState, name: str, keep_alive: float | str | None) -> None:
    """Load the model like the Ollama scheduler does on first use, then (re)arm its keep-alive.

    ``keep_alive`` is seconds (None: forever) or "default" for OLLAMA_KEEP_ALIVE.
    """
    tag = normalise_tag(name)
    seconds = keep_alive_seconds(None) if keep_alive == "default" else keep_alive
    async with state.load_lock:
        live = {lm.name for lm in state.live_models()}
        if tag not in live:
            _log_load(state, tag)
            started = time.monotonic()
            await state.sleep(state.config.startup_delay)
            state.ollama_log.line(
                "server.go:630",
                f"llama runner started in {time.monotonic() - started + 0.5:.2f} seconds",
            )
            loaded_at = time.time()
        else:
            loaded_at = state.loaded[tag].loaded_at
        expires = None if seconds is None else time.time() + seconds
        state.loaded[tag] = LoadedModel(tag, loaded_at, expires)


def _log_load(state: SimState, tag: str) -> None:
    log = state.ollama_log
    size_gib = state.loaded_size(tag) / 2**30
    blob = f"/root/.ollama/models/blobs/sha256-{state.digest(tag)}"
    offloaded = 30 if state.config.failing("cpu-offload") else 41
    log.line(
        "sched.go:804",
        "new model will fit in available VRAM, loading"
        if offloaded == 41
        else "new model will not fit in available VRAM, offloading layers to CPU",
        model=blob,
        library="cuda",
        parallel=1,
        required=f"{size_gib:.1f} GiB",
    )
    log.line(
        "server.go:168",
        "offload",
        library="cuda",
        layers__requested=-1,
        layers__model=41,
        layers__offload=offloaded,
        layers__split="",
        memory__available="[21.8 GiB]",
        memory__required__full=f"{size_gib:.1f} GiB",
        memory__required__partial=f"{size_gib * offloaded / 41:.1f} GiB",
        projector__weights="769.3 MiB",
    )
    log.line(
        "server.go:625", "waiting for server to become available", status="llm server loading model"
    )


async def pull(state: SimState, request: Request) -> Response:
    config = state.config
    body = await json_body(request)
    name = model_field(body)
    if not name:
        return api_error("model is required", 400)
    ok = known_tag(name) is not None and not config.failing("pull-error")
    if body.get("stream") is False:
        await state.sleep(config.pull_duration)
        if not ok:
            return api_error(PULL_MANIFEST_ERROR, 500)
        state.mark_pulled(name)
        return JSONResponse({"status": "success"})
    return StreamingResponse(_pull_stream(state, name, ok), media_type="application/x-ndjson")


async def generate(state: SimState, request: Request) -> Response:
    body = await json_body(request)
    name = model_field(body)
    if not name:
        return api_error("model is required", 400)
    if normalise_tag(name) not in state.pulled:
        return api_error(not_found_message(name), 404)
    try:
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
    except ValueError as exc:
        return api_error(str(exc), 400)
    prompt_text = str(body.get("prompt") or "")
    images = body.get("images") or []
    if not prompt_text and not images:
        # A preload (or an unload with keep_alive 0): no generation at all.
        if keep_alive == 0:
            state.loaded.pop(normalise_tag(name), None)
            return JSONResponse(_done(name, "unload"))
        await ensure_loaded(state, name, keep_alive)
        return JSONResponse(_done(name, "load"))
    prompt = gen.Prompt(texts=[prompt_text], last_user_text=prompt_text, last_role="user")
    error = _native_images(state, images, prompt)
    if error is not None:
        return error
    prompt.tokens = (
        gen.count_tokens(prompt_text)
        + sum(i.tokens for i in prompt.images)
        + gen.TEMPLATE_TOKENS_PER_MESSAGE
    )
    await ensure_loaded(state, name, keep_alive)
    shaped = _shape(body, prompt)
    return await _native_reply(state, body, name, prompt, shaped, chat=False)


async def chat(state: SimState, request: Request) -> Response:
    config = state.config
    body = await json_body(request)
    name = model_field(body)
    if not name:
        return api_error("model is required", 400)
    if normalise_tag(name) not in state.pulled:
        return api_error(not_found_message(name), 404)
    try:
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
    except ValueError as exc:
        return api_error(str(exc), 400)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        return api_error("messages must be a list", 400)
    prompt = gen.Prompt()
    images: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            return api_error("each message must be an object", 400)
        text = str(message.get("content") or "")
        prompt.texts.append(text)
        prompt.last_role = str(message.get("role", ""))
        if prompt.last_role == "user":
            prompt.last_user_text = text
        if prompt.last_role == "tool":
            prompt.last_tool_result = text
        images += message.get("images") or []
    error = _native_images(state, images, prompt)
    if error is not None:
        return error
    tools = body.get("tools") or []
    if tools and config.failing("no-tools"):
        return api_error(f"{OLLAMA_REGISTRY}/{normalise_tag(name)} does not support tools", 400)
    prompt.tokens = sum(
        gen.count_tokens(t) for t in prompt.texts
    ) + gen.TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
    await ensure_loaded(state, name, keep_alive)
    function = gen.choose_tool(tools, "auto", prompt) if tools else None
    if function is None:
        shaped = _shape(body, prompt)
    else:
        arguments = gen.build_arguments(function.get("parameters"), prompt.last_user_text)
        if state.draw("tools-as-text"):
            text = gen.tools_as_text([gen.ToolCall(str(function["name"]), arguments)])
            shaped = gen.shape(text, _limits(body), pad=False)
        else:
            # server/routes.go ChatHandler: each parsed call gets toolCallId() ("call_" + 8
            # lowercase alphanumerics) and its function.index; the native API sends the
            # arguments as an object, not a JSON string.
            call = {
                "id": gen.tool_call_id("openai"),
                "function": {"index": 0, "name": function["name"], "arguments": arguments},
            }
            tokens = gen.count_tokens(json.dumps(arguments)) + 3
            return await _native_reply(
                state, body, name, prompt, gen.Shaped([""], "stop"), chat=True,
                tool_calls=[call], tool_tokens=tokens,
            )  # fmt: skip
    return await _native_reply(state, body, name, prompt, shaped, chat=True)


def _done(name: str, reason: str) -> dict:
    return {
        "model": name,
        "created_at": go_time(time.time()),
        "response": "",
        "done": True,
        "done_reason": reason,
    }


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    value = options.get("num_predict") if isinstance(options, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _limits(body: dict[str, Any]) -> gen.OutputLimits:
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    return gen.OutputLimits(
        max_tokens=_num_predict(body),
        stop=[s for s in stop if isinstance(s, str) and s],
    )


def _shape(body: dict[str, Any], prompt: gen.Prompt) -> gen.Shaped:
    """The answer text, or JSON when ``format`` is "json" or a schema (llama.cpp grammar)."""
    fmt = structured_format({"format": body.get("format")})
    if fmt is not None:
        text = gen.json_answer(None if fmt == "json" else fmt, prompt.last_user_text)
        return gen.shape(text, _limits(body), pad=False)
    return gen.shape(gen.answer_text(prompt), _limits(body))


def _native_images(state: SimState, images: list[Any], prompt: gen.Prompt) -> Response | None:
    """Native /api images are bare base64 strings."""
    if images and not state.config.vision_enabled:
        return api_error(NO_IMAGE_SUPPORT, 500)
    for item in images:
        try:
            data = base64.b64decode(str(item), validate=True)
            prompt.images.append(inspect_image(data))
        except (ValueError, ImageError):
            return api_error(
                "illegal base64 data at input byte 0" if not item else "invalid image input", 400
            )
    return None


async def _native_reply(
    state: SimState,
    body: dict[str, Any],
    name: str,
    prompt: gen.Prompt,
    shaped: gen.Shaped,
    chat: bool,
    tool_calls: list[dict] | None = None,
    tool_tokens: int = 0,
) -> Response:
    state.requests_served += 1
    deltas = shaped.deltas
    finish = "length" if shaped.finish_reason == "length" else "stop"
    tokens = tool_tokens if tool_calls else gen.token_count(deltas)
    state.prompt_tokens_total += prompt.tokens
    state.generation_tokens_total += tokens
    engine = state.engine
    started = time.monotonic()

    def piece(text: str, calls: list[dict] | None = None) -> dict:
        base = {"model": name, "created_at": go_time(time.time())}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            return {**base, "message": message, "done": False}
        return {**base, "response": text, "done": False}

    def final(full_text: str, calls: list[dict] | None, first_at: float) -> dict:
        # server/routes.go: every done message carries the api.Metrics counts and durations,
        # plus total and load duration.
        now = time.monotonic()
        done = {**piece(full_text, calls), "done": True, "done_reason": finish}
        done.update(
            total_duration=int((now - started) * 1e9) + 1_000_000,
            load_duration=1_000_000,
            prompt_eval_count=prompt.tokens,
            prompt_eval_duration=max(1, int((first_at - started) * 1e9)),
            eval_count=tokens,
            eval_duration=max(1, int((now - first_at) * 1e9)),
        )
        if not chat:
            done["context"] = list(range(1, min(prompt.tokens + tokens, 32) + 1))
        return done

    if body.get("stream") is False:
        seq = await engine.admit(prompt.tokens, reserve=prompt.tokens + tokens)
        try:
            await seq.wait_first(state.stop)
            first_at = time.monotonic()
            seq.emitted()
            for _ in range(max(0, tokens - 1)):
                await seq.wait_next(state.stop)
            if tokens > 1:
                seq.emitted(tokens - 1)
        finally:
            seq.finish()
        return JSONResponse(final("".join(deltas), tool_calls, first_at))

    async def lines() -> AsyncIterator[bytes]:
        seq = await engine.admit(prompt.tokens, reserve=prompt.tokens + tokens)
        try:
            await seq.wait_first(state.stop)
            first_at = time.monotonic()
            if tool_calls:
                # The tool parser buffers the call's tokens and sends it whole, content "".
                for _ in range(max(0, tokens - 1)):
                    await seq.wait_next(state.stop)
                seq.emitted(tokens)
                yield (json.dumps(piece("", tool_calls)) + "\n").encode()
            else:
                for n, text in enumerate(deltas):
                    if n:
                        await seq.wait_next(state.stop)
                    seq.emitted()
                    yield (json.dumps(piece(text)) + "\n").encode()
            yield (json.dumps(final("", None, first_at)) + "\n").encode()
        finally:
            seq.finish()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _pull_stream(state: SimState, name: str, ok: bool) -> AsyncIterator[bytes]:
    def line(payload: dict) -> bytes:
        return (json.dumps(payload) + "\n").encode()

    yield line({"status": "pulling manifest"})
    if not ok:
        await state.sleep(state.config.pull_duration / 4)
        # HTTP 200 was sent already: the error travels as a line of the stream.
        yield line({"error": PULL_MANIFEST_ERROR})
        return
    layers = [("model", state.model_bytes(name)), *SMALL_LAYERS]
    steps = 8
    for kind, total in layers:
        digest = state.digest(name) if kind == "model" else _layer_digest(name, kind)
        status = f"pulling {digest[:12]}"
        yield line({"status": status, "digest": f"sha256:{digest}", "total": total})
        for step in range(1, steps + 1 if kind == "model" else 2):
            await state.sleep(state.config.pull_duration / (steps + 3))
            done = total if kind != "model" else total * step // steps
            yield line(
                {"status": status, "digest": f"sha256:{digest}", "total": total, "completed": done}
            )
    for status in ("verifying sha256 digest", "writing manifest"):
        yield line({"status": status})
    state.mark_pulled(name)
    yield line({"status": "success"})


def _layer_digest(name: str, kind: str) -> str:
    return digest_of(f"{normalise_tag(name)}:{kind}")


# Embeddings, copy, create -----------------------------------------------------------------


def _vector(text: str, size: int = m.hidden_size) -> list[float]:
    """A deterministic unit vector for a text (same text, same embedding)."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % 32] * (i + 1)) % 251) / 125.0 - 1.0 for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


async def _embed_inputs(
    state: SimState, request: Request
) -> tuple[str, list[str], dict[str, Any]] | Response:
    body = await json_body(request)
    name = model_field(body)
    if not name:
        return api_error("model is required", 400)
    raw = body.get("input", body.get("prompt"))
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif raw is None:
        inputs = []
    else:
        # server/routes.go EmbedHandler
        return api_error("invalid input type", 400)
    if normalise_tag(name) not in state.pulled:
        # server/routes.go EmbedHandler: 404 "model '%s' not found"
        return api_error(f"model '{name}' not found", 404)
    await ensure_loaded(state, name, keep_alive_seconds(body.get("keep_alive")))
    return name, inputs, body


async def embed(state: SimState, request: Request) -> Response:
    """POST /api/embed -> api.EmbedResponse (server/routes.go EmbedHandler)."""
    got = await _embed_inputs(state, request)
    if isinstance(got, Response):
        return got
    name, inputs, _ = got
    tokens = sum(gen.count_tokens(t) for t in inputs)
    body: dict[str, Any] = {"model": name, "embeddings": [_vector(t) for t in inputs]}
    if inputs:
        body.update(total_duration=2_000_000, load_duration=1_000_000, prompt_eval_count=tokens)
    return JSONResponse(body)


async def embeddings(state: SimState, request: Request) -> Response:
    """POST /api/embeddings (legacy) -> api.EmbeddingResponse {"embedding": [...]}."""
    got = await _embed_inputs(state, request)
    if isinstance(got, Response):
        return got
    _, inputs, _ = got
    return JSONResponse({"embedding": _vector(inputs[0]) if inputs and inputs[0] else []})


async def openai_embeddings(state: SimState, request: Request) -> Response:
    """POST /v1/embeddings -> openai.ToEmbeddingList."""
    got = await _embed_inputs(state, request)
    if isinstance(got, Response):
        body = json.loads(bytes(got.body))
        error = {"message": body.get("error", ""), "type": "invalid_request_error"}
        if got.status_code == 404:
            error["type"] = "not_found_error"
        return JSONResponse(
            {"error": {**error, "param": None, "code": None}}, status_code=got.status_code
        )
    name, inputs, _ = got
    tokens = sum(gen.count_tokens(t) for t in inputs)
    data = [
        {"object": "embedding", "embedding": _vector(t), "index": i} for i, t in enumerate(inputs)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def copy(state: SimState, request: Request) -> Response:
    """POST /api/copy (server/routes.go CopyHandler): 200 with an empty body."""
    body = await json_body(request)
    source, destination = str(body.get("source") or ""), str(body.get("destination") or "")
    if not body:
        return api_error("missing request body", 400)
    if not source:
        return api_error(f"source {source!r} is invalid".replace("'", '"'), 400)
    if not destination:
        return api_error(f"destination {destination!r} is invalid".replace("'", '"'), 400)
    if normalise_tag(source) not in state.pulled:
        return api_error(f'model "{source}" not found', 404)
    state.pulled[normalise_tag(destination)] = time.time()
    state.aliases[normalise_tag(destination)] = state.aliases.get(
        normalise_tag(source), normalise_tag(source)
    )
    return Response(status_code=200)


async def create(state: SimState, request: Request) -> Response:
    """POST /api/create from an existing model (``from``): a status stream, then "success"."""
    body = await json_body(request)
    name = model_field(body)
    if not name:
        return api_error("model is required", 400)
    base = str(body.get("from") or "")
    if not base:
        # server/create.go: without files or a base model there is nothing to create from.
        return api_error("neither 'from' or 'files' was specified", 400)
    if normalise_tag(base) not in state.pulled:
        return api_error(f"model '{base}' not found", 404)
    statuses = [
        {"status": f"using existing layer sha256:{state.digest(base)}"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    state.pulled[normalise_tag(name)] = time.time()
    state.aliases[normalise_tag(name)] = state.aliases.get(normalise_tag(base), normalise_tag(base))
    if body.get("stream") is False:
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        for status in statuses:
            yield (json.dumps(status) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
