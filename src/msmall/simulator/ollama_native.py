"""Ollama's native API: /api/pull, /api/generate (preload, unload, generate), /api/chat.

Ollama loads a model on first use (the simulator's startup delay is that load time), keeps it
for keep_alive, and reports errors as ``{"error": "..."}``; a pull reports them as a line of
an NDJSON stream that already answered HTTP 200.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from msmall.simulator import generation as gen
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
    deltas, finish = gen.limit(gen.answer_text(prompt), _num_predict(body))
    return await _native_reply(state, body, name, prompt, deltas, finish, chat=False)


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
        text = gen.answer_text(prompt)
    else:
        arguments = gen.build_arguments(function.get("parameters"), prompt.last_user_text)
        if config.failing("tools-as-text"):
            text = gen.tools_as_text([gen.ToolCall(str(function["name"]), arguments)])
        else:
            # The native API sends arguments as an object, not a JSON string.
            call = {"function": {"name": function["name"], "arguments": arguments}}
            reply = {"role": "assistant", "content": "", "tool_calls": [call]}
            await state.sleep(config.ttft)
            return JSONResponse({**_done(name, "stop"), "message": reply})
    deltas, finish = gen.limit(text, _num_predict(body))
    return await _native_reply(state, body, name, prompt, deltas, finish, chat=True)


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
    deltas: list[str],
    finish: str,
    chat: bool,
) -> Response:
    config = state.config
    state.requests_served += 1

    def piece(text: str) -> dict:
        base = {"model": name, "created_at": go_time(time.time())}
        if chat:
            return {**base, "message": {"role": "assistant", "content": text}, "done": False}
        return {**base, "response": text, "done": False}

    def final(full_text: str) -> dict:
        done = {**piece(full_text), "done": True, "done_reason": finish}
        done.update(
            total_duration=int((config.ttft + config.tpot * len(deltas)) * 1e9) + 1_000_000,
            load_duration=1_000_000,
            prompt_eval_count=prompt.tokens,
            prompt_eval_duration=int(config.ttft * 1e9),
            eval_count=len(deltas),
            eval_duration=int(config.tpot * len(deltas) * 1e9),
        )
        return done

    if body.get("stream") is False:
        await state.sleep(config.ttft + config.tpot * max(0, len(deltas) - 1))
        return JSONResponse(final("".join(deltas)))

    async def lines() -> AsyncIterator[bytes]:
        await state.sleep(config.ttft)
        for n, text in enumerate(deltas):
            if n:
                await state.sleep(config.tpot)
            yield (json.dumps(piece(text)) + "\n").encode()
        yield (json.dumps(final("")) + "\n").encode()

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
