"""The Ollama 0.33 flavor: routes, the OpenAI-compatible /v1 dialect, /api/tags, ps, show.

The native generation routes live in ollama_native.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from msmall.models import MISTRAL_SMALL_3_1 as m
from msmall.simulator import generation as gen
from msmall.simulator import ollama_native as native
from msmall.simulator.chat import (
    ChatError,
    ChatRequest,
    Completion,
    Dialect,
    handle_chat,
    usage,
)
from msmall.simulator.config import OLLAMA_VERSION
from msmall.simulator.images import ImageError
from msmall.simulator.state import (
    OLLAMA_REGISTRY,
    SimState,
    go_time,
    normalise_tag,
)

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(message: str, status: int) -> JSONResponse:
    kind = _OPENAI_ERROR_TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


class OllamaDialect(Dialect):
    def error(self, exc: ChatError) -> Response:
        return openai_error(exc.message, exc.status)

    def check_model(self, name: str) -> None:
        if normalise_tag(name) not in self.state.pulled:
            raise ChatError(native.not_found_message(name), 404)

    def check_images(self, count: int) -> None:
        if count and not self.state.config.vision_enabled:
            raise ChatError(native.NO_IMAGE_SUPPORT, 500)

    def image_error(self, exc: ImageError) -> ChatError:
        return ChatError("invalid image input")

    def tool_mode(self, request: ChatRequest) -> str:
        if self.state.config.failing("no-tools"):
            raise ChatError(
                f"{OLLAMA_REGISTRY}/{normalise_tag(request.model)} does not support tools"
            )
        return "text" if self.state.draw("tools-as-text") else "call"

    async def before_generation(self, request: ChatRequest) -> None:
        await native.ensure_loaded(self.state, request.model, "default")

    def check_lengths(self, request: ChatRequest) -> None:
        # Ollama has no n (one choice, openai/openai.go ToChatCompletion) and no refusal for
        # long outputs: num_predict is max_tokens as given.
        request.n = 1

    def tool_finish(self, request: ChatRequest) -> str:
        # openai/openai.go ToChatCompletion: "stop" with tool calls becomes "tool_calls".
        return "tool_calls"

    def text_response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        # openai/openai.go ToCompletion.
        return {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {"text": completion.text, "index": 0, "finish_reason": completion.finish_reason}
            ],
            "usage": usage(request, completion),
        }

    def text_chunk(
        self, cid: str, request: ChatRequest, text: str, finish: str | None, index: int = 0
    ) -> dict:
        # openai/openai.go ToCompleteChunk.
        return {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        }

    def completion_id(self, kind: str = "chat", chat: ChatRequest | None = None) -> str:
        # openai/openai.go: "chatcmpl-" / "cmpl-" + rand.Intn(999)
        return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{random.randint(0, 999)}"

    def response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": completion.text}
        if completion.tool_calls:
            message["tool_calls"] = _openai_tool_calls(completion.tool_calls)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {"index": 0, "message": message, "finish_reason": completion.finish_reason}
            ],
            "usage": {
                "prompt_tokens": request.prompt.tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": request.prompt.tokens + completion.completion_tokens,
            },
        }

    def chunk(
        self, cid: str, request: ChatRequest, delta: dict, finish: str | None, index: int = 0
    ) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    def first_delta(self) -> dict | None:
        return None

    def last_delta(self) -> dict:
        # openai/openai.go FinishChunk: the finish reason on its own chunk, delta {}.
        return {}

    def tool_call_deltas(self, calls: list[gen.ToolCall]) -> list[dict]:
        # Ollama sends each tool call whole, in one chunk.
        return [{"content": "", "tool_calls": _openai_tool_calls(calls)}]


def _openai_tool_calls(calls: list[gen.ToolCall]) -> list[dict]:
    return [
        {
            "id": call.id,
            "index": index,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json},
        }
        for index, call in enumerate(calls)
    ]


def _details(state: SimState, name: str) -> dict:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "mistral3",
        "families": ["mistral3"],
        "parameter_size": "24.0B",
        "quantization_level": state.quantization(name),
    }


def _capabilities(state: SimState) -> list[str]:
    caps = ["completion"]
    if state.config.vision_enabled:
        caps.append("vision")
    if not state.config.failing("no-tools"):
        caps.append("tools")
    return caps


def build_ollama_app(state: SimState) -> Starlette:
    config = state.config

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(request: Request) -> Response:
        models = [
            {
                "name": tag,
                "model": tag,
                "modified_at": go_time(when),
                "size": state.model_bytes(tag),
                "digest": state.digest(tag),
                "details": _details(state, tag),
            }
            for tag, when in sorted(state.pulled.items())
        ]
        return JSONResponse({"models": models})

    async def ps(request: Request) -> Response:
        models = [
            {
                "name": lm.name,
                "model": lm.name,
                "size": state.loaded_size(lm.name),
                "digest": state.digest(lm.name),
                "details": _details(state, lm.name),
                "expires_at": go_time(lm.expires_at),
                "size_vram": state.vram_size(lm.name),
                "context_length": config.context_length,
            }
            for lm in state.live_models()
        ]
        return JSONResponse({"models": models})

    async def show(request: Request) -> Response:
        body = await native.json_body(request)
        name = native.model_field(body)
        if not name:
            return native.api_error("model is required", 400)
        if normalise_tag(name) not in state.pulled:
            return native.api_error(f"model '{name}' not found", 404)
        return JSONResponse(
            {
                "license": "Apache License\nVersion 2.0, January 2004\n...",
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {normalise_tag(name)}\n',
                "parameters": "num_ctx                        4096",
                "template": "{{- range $index, $_ := .Messages }}[INST]{{ .Content }}[/INST]{{ end }}",
                "details": _details(state, name),
                "model_info": {
                    "general.architecture": "mistral3",
                    "general.parameter_count": 24_011_361_280,
                    "mistral3.block_count": m.num_layers,
                    "mistral3.context_length": m.max_context,
                    "mistral3.embedding_length": m.hidden_size,
                    "mistral3.attention.head_count": m.num_query_heads,
                    "mistral3.attention.head_count_kv": m.num_kv_heads,
                    "mistral3.vision.block_count": 24,
                },
                "capabilities": _capabilities(state),
                "modified_at": go_time(state.pulled[normalise_tag(name)]),
            }
        )

    async def pull(request: Request) -> Response:
        return await native.pull(state, request)

    async def delete(request: Request) -> Response:
        name = native.model_field(await native.json_body(request))
        tag = normalise_tag(name)
        if tag not in state.pulled:
            return native.api_error(f"model '{name}' not found", 404)
        del state.pulled[tag]
        state.loaded.pop(tag, None)
        return Response(status_code=200)

    async def generate(request: Request) -> Response:
        return await native.generate(state, request)

    async def chat(request: Request) -> Response:
        return await native.chat(state, request)

    async def openai_models(request: Request) -> Response:
        data = [
            {"id": tag, "object": "model", "created": int(when), "owned_by": "library"}
            for tag, when in sorted(state.pulled.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    dialect = OllamaDialect(state)

    async def openai_chat(request: Request) -> Response:
        return await handle_chat(request, dialect)

    async def openai_completions(request: Request) -> Response:
        return await handle_chat(request, dialect, "text")

    async def openai_model(request: Request) -> Response:
        # middleware.RetrieveMiddleware + ShowHandler -> openai.ToModel.
        name = request.path_params["model"]
        tag = normalise_tag(name)
        if tag not in state.pulled:
            return openai_error(f'model "{name}" not found', 404)
        return JSONResponse(
            {
                "id": name,
                "object": "model",
                "created": int(state.pulled[tag]),
                "owned_by": "library",
            }
        )

    async def embed(request: Request) -> Response:
        return await native.embed(state, request)

    async def embeddings(request: Request) -> Response:
        return await native.embeddings(state, request)

    async def openai_embeddings(request: Request) -> Response:
        return await native.openai_embeddings(state, request)

    async def copy(request: Request) -> Response:
        return await native.copy(state, request)

    async def create(request: Request) -> Response:
        return await native.create(state, request)

    async def not_found(request: Request, exc: Exception) -> Response:
        # Gin's default bodies; server/routes.go sets r.HandleMethodNotAllowed = true, so a
        # known path with the wrong method is 405, not 404.
        if getattr(exc, "status_code", 404) == 405:
            return PlainTextResponse("405 method not allowed", status_code=405)
        return PlainTextResponse("404 page not found", status_code=404)

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/pull", pull, methods=["POST"]),
        Route("/api/delete", delete, methods=["DELETE"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/v1/completions", openai_completions, methods=["POST"]),
        Route("/v1/models/{model:path}", openai_model, methods=["GET"]),
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
        Route("/api/copy", copy, methods=["POST"]),
        Route("/api/create", create, methods=["POST"]),
    ]
    middleware = [Middleware(GinLog, state=state)]
    if config.failing("http-503"):
        middleware.append(Middleware(Busy))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.sim = state
    return app


class Busy:
    """http-503: everything but /api/version answers 503 "server busy" (the queue is full)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/api/version":
            response = (
                openai_error(SERVER_BUSY, 503)
                if scope["path"].startswith("/v1/")
                else native.api_error(SERVER_BUSY, 503)
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class GinLog:
    """Ollama's access line (gin), printed when the response is complete."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_and_log(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                client = (scope.get("client") or ("127.0.0.1", 0))[0]
                self.state.ollama_log.gin(
                    status, time.monotonic() - started, client, scope["method"], scope["path"]
                )

        await self.app(scope, receive, send_and_log)
