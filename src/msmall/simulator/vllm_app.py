"""The vLLM 0.33 flavor: routes, error shapes and tool behaviour of ``vllm serve``."""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from msmall.simulator import generation as gen
from msmall.simulator.chat import ChatError, ChatRequest, Completion, Dialect, handle_chat
from msmall.simulator.config import VLLM_VERSION
from msmall.simulator.images import ImageError
from msmall.simulator.state import SimState

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def vllm_error(
    message: str, status: int = 400, kind: str = "BadRequestError", param: str | None = None
) -> JSONResponse:
    """vLLM's ErrorResponse: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


class VllmDialect(Dialect):
    tool_id_style = "mistral"

    def error(self, exc: ChatError) -> Response:
        return vllm_error(exc.message, exc.status, exc.kind, exc.param)

    def check_model(self, name: str) -> None:
        if name not in self.state.config.model_names:
            raise ChatError(f"The model `{name}` does not exist.", 404, "NotFoundError", "model")

    def check_images(self, count: int) -> None:
        allowed = self.state.config.image_limit
        if allowed is not None and count > allowed:
            # vllm/multimodal/processing.py validate_num_items; Mistral 3 has no model-side
            # limit, so the "Set `--limit-mm-per-prompt`" hint is not appended.
            raise ChatError(
                f"At most {allowed} image(s) may be provided in one prompt.", param="image"
            )

    def image_error(self, exc: ImageError) -> ChatError:
        return ChatError(f"Failed to load image: {exc}")

    def check_lengths(self, request: ChatRequest) -> None:
        limit = self.state.config.context_length
        used = request.prompt.tokens
        if used >= limit:
            raise ChatError(
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{used} input tokens. Please reduce the length of the input messages.",
                param="input_tokens",
            )
        wanted = request.max_tokens
        if wanted is not None and used + wanted > limit:
            raise ChatError(
                f"'max_tokens' or 'max_completion_tokens' is too large: {wanted}. This model's "
                f"maximum context length is {limit} tokens and your request has {used} input "
                f"tokens ({wanted} > {limit} - {used}).",
                param="max_tokens",
            )

    def tool_mode(self, request: ChatRequest) -> str:
        config = self.state.config
        choice = request.tool_choice
        if config.failing("tool-choice-400") and choice not in (None, "none"):
            # HF tokenizer, no --tool-call-parser: serving.py refuses before generating.
            if choice == "auto":
                raise ChatError(
                    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
                )
            label = choice if isinstance(choice, str) else json.dumps(choice)
            raise ChatError(f'tool_choice="{label}" requires --tool-call-parser to be set')
        if config.failing("tools-as-text") and choice in (None, "auto"):
            # Named and "required" tool choices use structured outputs, so they still parse;
            # only "auto" needs the parser, and without it the raw text comes back.
            return "text"
        return "call"

    def response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        tool_calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in completion.tool_calls
        ]
        message = {
            "role": "assistant",
            "content": None if tool_calls else completion.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": tool_calls,
            "reasoning_content": None,
        }
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                    "stop_reason": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**_usage(request, completion), "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    def chunk(self, cid: str, request: ChatRequest, delta: dict, finish: str | None) -> dict:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        if finish is not None:
            choice["stop_reason"] = None
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
            "choices": [choice],
        }

    def tool_call_deltas(self, calls: list[gen.ToolCall]) -> list[dict]:
        # Mistral's streaming parser sends the name first, then the arguments in pieces.
        deltas = []
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name},
            }
            deltas.append({"tool_calls": [head]})
            text = call.arguments_json
            step = max(1, len(text) // 4)
            for start in range(0, len(text), step):
                piece = {"index": index, "function": {"arguments": text[start : start + step]}}
                deltas.append({"tool_calls": [piece]})
        return deltas

    def last_delta(self) -> dict:
        return {"content": ""}


def _usage(request: ChatRequest, completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": request.prompt.tokens,
        "total_tokens": request.prompt.tokens + completion.completion_tokens,
        "completion_tokens": completion.completion_tokens,
    }


class ApiKeyGuard:
    """vLLM's --api-key: only /v1/* needs ``Authorization: Bearer KEY``; /health etc. stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and scope["method"] != "OPTIONS"
        ):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != self.expected:
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """uvicorn's access line, as vLLM prints it: ``INFO:     127.0.0.1:53400 - "GET /health HTTP/1.1" 200 OK``."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_and_log(message: dict) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                try:
                    phrase = HTTPStatus(status).phrase
                except ValueError:
                    phrase = ""
                host, port = scope.get("client") or ("127.0.0.1", 0)
                path = scope["path"] + (
                    f"?{scope['query_string'].decode()}" if scope.get("query_string") else ""
                )
                self.state.vllm_log.uvicorn(
                    f'{host}:{port} - "{scope["method"]} {path} HTTP/{scope.get("http_version", "1.1")}" '
                    f"{status} {phrase}"
                )
            await send(message)

        await self.app(scope, receive, send_and_log)


def build_vllm_app(state: SimState) -> Starlette:
    config = state.config
    dialect = VllmDialect(state)

    async def health(request: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VLLM_VERSION})

    async def models(request: Request) -> Response:
        now = int(time.time())
        root = config.model or config.model_name
        data = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": root,
                "parent": None,
                "max_model_len": config.context_length,
                "permission": [
                    {
                        "id": f"modelperm-{gen.tool_call_id('openai')[5:]}",
                        "object": "model_permission",
                        "created": now,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in config.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(request: Request) -> Response:
        if not state.healthy:
            return vllm_error(ENGINE_DEAD, 503, "ServiceUnavailableError")
        return await handle_chat(request, dialect)

    async def load(request: Request) -> Response:
        return JSONResponse({"server_load": 0})

    async def ping(request: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def metrics(request: Request) -> Response:
        label = f'engine="0",model_name="{config.model_name}"'
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} 0.0",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} 0.0",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {float(state.prompt_tokens_total)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{label}}} {float(state.generation_tokens_total)}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, exc: Exception) -> Response:
        # FastAPI's default bodies.
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        detail = "Not Found" if status == 404 else "Method Not Allowed"
        return JSONResponse({"detail": detail}, status_code=status)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/load", load, methods=["GET"]),
        Route("/ping", ping, methods=["GET", "POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    middleware = [Middleware(AccessLog, state=state)]
    if config.api_key:
        middleware.append(Middleware(ApiKeyGuard, api_key=config.api_key))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.sim = state
    return app


# The routes vLLM logs at startup ("Available routes are:"), for the simulator's log.
LOGGED_ROUTES = (
    ("/openapi.json", "HEAD, GET"),
    ("/docs", "HEAD, GET"),
    ("/health", "GET"),
    ("/load", "GET"),
    ("/ping", "POST"),
    ("/ping", "GET"),
    ("/version", "GET"),
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/metrics", "GET"),
)
