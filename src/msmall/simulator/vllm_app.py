"""The vLLM 0.33 flavor: routes, error shapes and tool behaviour of ``vllm serve``."""

from __future__ import annotations

import json
import time
import uuid
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
from msmall.simulator.chat import (
    ChatError,
    ChatRequest,
    Completion,
    Dialect,
    handle_chat,
    logprobs_content,
    text_logprobs,
    usage,
)
from msmall.simulator.config import VLLM_VERSION
from msmall.simulator.images import ImageError
from msmall.simulator.state import SimState
from msmall.simulator.vllm_validation import (
    _FLOAT_FIELDS,
    _INT_FIELDS,
    VLLMValidationError,
    _bad,
    _bool_fields,
    all_plain,
    check_chat_body,
    check_rendering,
    check_template,
    model_validator_failure,
    normalize_messages,
    to_sim_parts,
    tool_call_errors,
    type_errors,
    validation_failure,
    vllm_error,
)

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
# vllm/v1/engine/exceptions.py EngineDeadError.CLIENT_MESSAGE: what a client gets (HTTP 500,
# InternalServerError) once the engine died (serve/exception_handling/error_response.py).
ENGINE_DEAD_CLIENT = "The server had an error while processing your request."
# vllm/entrypoints/serve/utils/fingerprint.py build_system_fingerprint, mode "full", TP 1:
# "vllm-<version>-<8 hex of vllm_config.compute_hash()>".
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-5e2b0c1d"


class VllmDialect(Dialect):
    tool_id_style = "mistral"
    counts_eos = True
    paged_kv = True
    finish_on_last_token = True

    def error(self, exc: ChatError) -> Response:
        return vllm_error(exc.message, exc.status, exc.kind, exc.param)

    def check_request(self, request: Request, body: Any) -> None:
        if body is None:
            # serve/utils/api_utils.py validate_json_request, a dependency of every POST route.
            media = request.headers.get("content-type", "").lower().split(";", 1)[0].strip()
            if media != "application/json":
                raise validation_failure(
                    ["Unsupported Media Type: Only 'application/json' is allowed"]
                )
            return
        try:
            if "messages" in body:
                check_chat_body(body)
        except VLLMValidationError as exc:
            raise model_validator_failure(exc, body) from None
        chat_route = "messages" in body or request.url.path.endswith("/chat/completions")
        if chat_route:
            normalize_messages(body)
        errors = type_errors(body, "chat" if chat_route else "text")
        # Messages every client sends need neither of the next two steps (all_plain).
        deeper = chat_route and not all_plain(body.get("messages"))
        if not errors and deeper:
            errors = tool_call_errors(body.get("messages"))
        if errors:
            raise validation_failure(errors, errors[0]["loc"])
        if deeper:
            check_rendering(body.get("messages"))
            to_sim_parts(body.get("messages"))
        if chat_route:
            check_template(body)
        for key in _INT_FIELDS + _FLOAT_FIELDS:
            if isinstance(body.get(key), str):
                body[key] = float(body[key]) if key in _FLOAT_FIELDS else int(body[key])
            elif key in _INT_FIELDS and isinstance(body.get(key), float):
                body[key] = int(body[key])
        for key in _bool_fields(body):
            value = body.get(key)
            if isinstance(value, str):
                body[key] = value.lower() in ("1", "on", "t", "true", "y", "yes")
            elif isinstance(value, int) and not isinstance(value, bool):
                body[key] = bool(value)

    def default_model(self) -> str | None:
        # The request's model is optional (protocol.py "model: str | None = None"); serving.py
        # _check_model lets None through and the first served name answers.
        return self.state.config.model_name

    def response_model(self, request: ChatRequest) -> str:
        # serving.py: model_name = self.models.model_name(lora_request), the first
        # --served-model-name whatever alias the request used.
        return self.state.config.model_name

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
        wanted = request.max_tokens
        param = request.max_tokens_param
        # vllm/renderers/params.py TokenizeParams.__post_init__: an output budget larger than
        # the whole context is refused...
        if wanted is not None and wanted > limit:
            raise _bad(
                VLLMValidationError(
                    f"{param}={wanted} cannot be greater than max_model_len={limit}. "
                    "Please request fewer output tokens.",
                    parameter=param,
                    value=wanted,
                )
            )
        # ... _token_len_check: so is a prompt longer than the context ...
        if used > limit:
            raise _bad(
                VLLMValidationError(
                    f"This model's maximum context length is {limit} tokens. However, your "
                    f"prompt contains {used} input tokens, which exceeds this limit even "
                    "without any output tokens. Please reduce the length of the input prompt.",
                    parameter="input_tokens",
                    value=used,
                )
            )
        # ... and serve/utils/api_utils.py get_max_tokens clamps the rest to what is left:
        # min(max_model_len - input_length, max_tokens).
        left = limit - used
        request.limits.max_tokens = left if wanted is None else min(wanted, left)
        # vllm/sampling_params.py _verify_args / _verify_num_sequences, in that order.
        if request.n < 1:
            raise _bad(VLLMValidationError(f"n must be at least 1, got {request.n}."))
        max_tokens = request.limits.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise _bad(
                VLLMValidationError(
                    f"max_tokens must be at least 1, got {max_tokens}.",
                    parameter="max_tokens",
                    value=max_tokens,
                )
            )
        if request.limits.min_tokens < 0:
            raise _bad(
                VLLMValidationError(
                    "min_tokens must be greater than or equal to 0, got "
                    f"{request.limits.min_tokens}."
                )
            )
        if max_tokens is not None and request.limits.min_tokens > max_tokens:
            raise _bad(
                VLLMValidationError(
                    f"min_tokens must be less than or equal to max_tokens={max_tokens}, got "
                    f"{request.limits.min_tokens}."
                )
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
        if choice in (None, "auto") and self.state.draw("tools-as-text"):
            # Named and "required" tool choices use structured outputs, so they still parse;
            # only "auto" needs the parser, and without it the raw text comes back.
            return "text"
        return "call"

    def message(self, completion: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            # chat_completion/message_assembly.py assemble_chat_message_fields: forced tool
            # calls ("required", named) get content "" ; auto calls keep the parser's None.
            "content": ("" if completion.forced else None)
            if completion.tool_calls
            else completion.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
        }
        if completion.tool_calls:
            # protocol.py ChatMessage._serialize drops an empty tool_calls list.
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in completion.tool_calls
            ]
        message["reasoning"] = None
        return message

    def response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        choices = []
        for index in range(request.n):
            logprobs = None
            if request.logprobs:
                logprobs = {"content": logprobs_content(completion.deltas, request.top_logprobs)}
            choices.append(
                {
                    "index": index,
                    "message": self.message(completion),
                    "logprobs": logprobs,
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                    "token_ids": None,
                }
            )
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.response_model(request),
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": {**usage(request, completion), "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "kv_transfer_params": None,
        }

    def text_response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        # vllm/entrypoints/openai/completion/protocol.py CompletionResponse.
        return {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.response_model(request),
            "choices": [
                {
                    "index": index,
                    "text": completion.text,
                    "logprobs": text_logprobs(completion.deltas, request.top_logprobs)
                    if request.logprobs
                    else None,
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "token_ids": None,
                }
                for index in range(request.n)
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": {**usage(request, completion), "prompt_tokens_details": None},
            "kv_transfer_params": None,
        }

    def chunk(
        self, cid: str, request: ChatRequest, delta: dict, finish: str | None, index: int = 0
    ) -> dict:
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        if finish is not None:
            choice["stop_reason"] = None
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.response_model(request),
            "choices": [choice],
        }
        # serving.py chat_completion_stream_generator: the fingerprint is stamped on terminal
        # chunks only, and on the trailing usage chunk instead when include_usage is on.
        if finish is not None and not request.include_usage:
            chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
        return chunk

    def usage_chunk(self, cid: str, request: ChatRequest, usage: dict) -> dict:
        return {
            **super().usage_chunk(cid, request, usage),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def text_chunk(
        self, cid: str, request: ChatRequest, text: str, finish: str | None, index: int = 0
    ) -> dict:
        return {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.response_model(request),
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            ],
        }

    def tool_call_deltas(self, calls: list[gen.ToolCall]) -> list[dict]:
        # vllm/parser/mistral.py, the pre-v11 path (Mistral Small 3.1's tekken v7 tokenizer):
        # the name first (with the 9-character id), then the arguments in pieces; every delta
        # is a DeltaToolCall(index, type="function") made afresh, so "type" is in each one.
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
                piece = {
                    "index": index,
                    "type": "function",
                    "function": {"arguments": text[start : start + step]},
                }
                deltas.append({"tool_calls": [piece]})
        return deltas

    def last_delta(self) -> dict:
        return {"content": ""}

    def headers(self, request: Request) -> dict[str, str]:
        return {}


class ApiKeyGuard:
    """vLLM's --api-key: only /v1/* needs ``Authorization: Bearer KEY``; /health etc. stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and scope["method"] != "OPTIONS"
        ):
            headers = dict(scope.get("headers") or [])
            value = headers.get(b"authorization", b"").decode("latin-1")
            # serve/middleware/authenticate.py verify_token: the scheme is matched
            # case-insensitively ("bearer", "BEARER"), the key exactly.
            scheme, _, key = value.partition(" ")
            if scheme.lower() != "bearer" or key != self.api_key:
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class XRequestId:
    """serve/middleware/x_request_id.py XRequestIdMiddleware (--enable-request-id-headers):
    the request's X-Request-Id echoed, or a new uuid4 hex."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id") or uuid.uuid4().hex.encode()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid)],
                }
            await send(message)

        await self.app(scope, receive, send_with_id)


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
            return vllm_error(ENGINE_DEAD_CLIENT, 500, "InternalServerError")
        return await handle_chat(request, dialect)

    async def completions(request: Request) -> Response:
        if not state.healthy:
            return vllm_error(ENGINE_DEAD_CLIENT, 500, "InternalServerError")
        return await handle_chat(request, dialect, "text")

    async def load(request: Request) -> Response:
        return JSONResponse({"server_load": 0})

    async def ping(request: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def metrics(request: Request) -> Response:
        label = f'engine="0",model_name="{config.model_name}"'
        lines = [
            *state.engine.metric_lines(label),
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
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    from msmall.simulator.vllm_extra import add_routes

    add_routes(routes, dialect, LOGGED_ROUTES)
    # vllm/entrypoints/launchers/api_server/entry.py: access_log=not
    # args.disable_uvicorn_access_log.
    middleware = [Middleware(AccessLog, state=state)] if config.access_log else []
    if config.api_key:
        middleware.append(Middleware(ApiKeyGuard, api_key=config.api_key))
    if config.request_id_headers:
        middleware.append(Middleware(XRequestId))
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
    ("/v1/completions", "POST"),
    ("/v1/responses", "POST"),
    ("/v1/messages", "POST"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/metrics", "GET"),
)
