"""The vLLM 0.33 routes beyond chat and completions: /tokenize, /detokenize, /v1/responses,
/v1/messages (Anthropic style), /openapi.json and /docs.

Sources (vllm 0.33.0 wheel): entrypoints/serve/tokenize/protocol.py (TokenizeResponse,
DetokenizeResponse), entrypoints/openai/responses/protocol.py (ResponsesResponse),
entrypoints/anthropic/ (AnthropicMessagesResponse), FastAPI's /openapi.json and /docs that
vLLM's app keeps (api_server.py build_app).

Both /v1/responses and /v1/messages also stream (their own SSE event sequences). Tools are
not modelled on either.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from msmall.simulator import generation as gen
from msmall.simulator.chat import (
    ChatError,
    ChatRequest,
    Completion,
    generate_whole,
    prepare,
    stream_tokens,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from msmall.simulator.state import SimState
    from msmall.simulator.vllm_app import VllmDialect


class Vocabulary:
    """Token ids for the simulator's tokens (one per word piece), stable for a server's life,
    so /detokenize gives back what /tokenize was given."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in gen.pieces(text):
            if piece not in self.ids:
                self.ids[piece] = 1000 + len(self.pieces)
                self.pieces.append(piece)
            out.append(self.ids[piece])
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(
            self.pieces[i - 1000] if 1000 <= i < 1000 + len(self.pieces) else f"<unk_{i}>"
            for i in ids
        )


async def _body(request: Request, dialect: VllmDialect) -> dict[str, Any]:
    dialect.check_request(request, None)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ChatError("Invalid JSON in the request body") from None
    if not isinstance(body, dict):
        raise ChatError("The request body must be a JSON object")
    return body


def _check_model(body: dict[str, Any], dialect: VllmDialect) -> None:
    model = body.get("model")
    if model is not None:
        dialect.check_model(str(model))


def add_routes(routes: list, dialect: VllmDialect) -> None:
    from starlette.routing import Route

    state = dialect.state
    config = state.config
    vocab = Vocabulary()

    def guarded(handler: Any) -> Any:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except ChatError as exc:
                return dialect.error(exc)
            except gen.RequestError as exc:
                return dialect.error(ChatError(str(exc), param=exc.param))

        return run

    async def tokenize(request: Request) -> Response:
        body = await _body(request, dialect)
        _check_model(body, dialect)
        if "messages" in body:
            texts = [
                m.get("content")
                if isinstance(m.get("content"), str)
                else json.dumps(m.get("content"))
                for m in body["messages"]
                if isinstance(m, dict)
            ]
            text = "[INST]" + "[/INST][INST]".join(t or "" for t in texts) + "[/INST]"
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise ChatError("Field required: prompt", param="prompt")
        # BOS (id 1) first when add_special_tokens (the default for a prompt).
        ids = ([1] if body.get("add_special_tokens", True) else []) + vocab.encode(text)
        reply: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": config.context_length,
            "tokens": ids,
            "token_strs": None,
        }
        if body.get("return_token_strs"):
            reply["token_strs"] = ["<s>" if i == 1 else vocab.decode([i]) for i in ids]
        return JSONResponse(reply)

    async def detokenize(request: Request) -> Response:
        body = await _body(request, dialect)
        _check_model(body, dialect)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
        ):
            raise ChatError("tokens must be a list of non-negative integers", param="tokens")
        return JSONResponse({"prompt": vocab.decode([t for t in tokens if t != 1])})

    async def responses(request: Request) -> Response:
        arrived = time.monotonic()
        body = await _body(request, dialect)
        messages = []
        if isinstance(body.get("instructions"), str):
            messages.append({"role": "system", "content": body["instructions"]})
        raw = body.get("input")
        if isinstance(raw, str):
            messages.append({"role": "user", "content": raw})
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict) and "role" in item:
                    messages.append(
                        {"role": item["role"], "content": _text_of(item.get("content"))}
                    )
        else:
            raise ChatError("Field required: input", param="input")
        chat_body: dict[str, Any] = {"model": body.get("model"), "messages": messages}
        if body.get("max_output_tokens") is not None:
            chat_body["max_tokens"] = body["max_output_tokens"]
        text_format = (
            (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        )
        if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
            chat_body["response_format"] = {"type": "json_schema", "json_schema": text_format}
        elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
            chat_body["response_format"] = {"type": "json_object"}
        if body.get("stream"):
            chat, completion = await prepare(chat_body, dialect)
            return StreamingResponse(
                _responses_events(state, dialect, body, chat, completion, arrived),
                media_type="text/event-stream",
            )
        chat, completion = await generate_whole(chat_body, dialect, arrived)
        return JSONResponse(_response_object(dialect, body, chat, completion, "completed"))

    async def messages_route(request: Request) -> Response:
        arrived = time.monotonic()
        body = await _body(request, dialect)
        messages = []
        system = body.get("system")
        if system:
            messages.append({"role": "system", "content": _text_of(system)})
        for item in body.get("messages") or []:
            if isinstance(item, dict):
                messages.append(
                    {"role": item.get("role"), "content": _text_of(item.get("content"))}
                )
        if body.get("max_tokens") is None:
            # Anthropic's API requires max_tokens.
            raise ChatError("Field required: max_tokens", param="max_tokens")
        chat_body = {
            "model": body.get("model"),
            "messages": messages,
            "max_tokens": body["max_tokens"],
        }
        if body.get("stop_sequences"):
            chat_body["stop"] = body["stop_sequences"]
        if body.get("stream"):
            chat, completion = await prepare(chat_body, dialect)
            return StreamingResponse(
                _anthropic_events(state, dialect, chat, completion, arrived),
                media_type="text/event-stream",
            )
        chat, completion = await generate_whole(chat_body, dialect, arrived)
        stop_reason, _ = _anthropic_stop(completion)
        return JSONResponse(
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": completion.text}],
                "model": dialect.response_model(chat),
                "stop_reason": stop_reason,
                "stop_sequence": completion.stop_reason,
                "usage": {
                    "input_tokens": chat.prompt.tokens,
                    "output_tokens": completion.completion_tokens,
                },
            }
        )

    async def openapi(request: Request) -> Response:
        from msmall.simulator.config import VLLM_VERSION
        from msmall.simulator.vllm_app import LOGGED_ROUTES

        paths: dict[str, dict] = {}
        for path, methods in LOGGED_ROUTES:
            for method in methods.replace(" ", "").split(","):
                if method != "HEAD" and path not in ("/openapi.json", "/docs"):
                    paths.setdefault(path, {})[method.lower()] = {
                        "summary": path.strip("/").replace("/", " "),
                        "responses": {"200": {"description": "Successful Response"}},
                    }
        return JSONResponse(
            {
                "openapi": "3.1.0",
                "info": {"title": "FastAPI", "version": VLLM_VERSION},
                "paths": paths,
            }
        )

    async def docs(request: Request) -> Response:
        # fastapi/openapi/docs.py get_swagger_ui_html (the page; its assets come from a CDN).
        return HTMLResponse(
            '<!DOCTYPE html>\n<html>\n<head>\n<link type="text/css" rel="stylesheet" '
            'href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">\n'
            "<title>FastAPI - Swagger UI</title>\n</head>\n<body>\n"
            '<div id="swagger-ui">\n</div>\n'
            '<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js">'
            "</script>\n<script>\nconst ui = SwaggerUIBundle({url: '/openapi.json', "
            "dom_id: '#swagger-ui'})\n</script>\n</body>\n</html>"
        )

    routes += [
        Route("/tokenize", guarded(tokenize), methods=["POST"]),
        Route("/detokenize", guarded(detokenize), methods=["POST"]),
        Route("/v1/responses", guarded(responses), methods=["POST"]),
        Route("/v1/messages", guarded(messages_route), methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text")
        )
    return ""


def _event(name: str, payload: dict[str, Any]) -> bytes:
    # entrypoints/anthropic/serving.py wrap_data_with_event.
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _anthropic_stop(completion: Completion) -> tuple[str, str | None]:
    if completion.stop_reason is not None:
        return "stop_sequence", completion.stop_reason
    return ("max_tokens" if completion.finish_reason == "length" else "end_turn"), None


async def _anthropic_events(
    state: SimState,
    dialect: VllmDialect,
    chat: ChatRequest,
    completion: Completion,
    arrived: float,
) -> AsyncIterator[bytes]:
    """entrypoints/anthropic/serving.py message_stream_converter: message_start,
    content_block_start, content_block_delta (text_delta) per token, content_block_stop,
    message_delta (stop_reason, usage), message_stop."""
    usage = {"input_tokens": chat.prompt.tokens, "output_tokens": 0}
    yield _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": dialect.response_model(chat),
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
        },
    )
    started = False
    async for piece in stream_tokens(state, chat, completion, arrived):
        if not started:
            started = True
            yield _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        if piece:
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
    if started:
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    reason, sequence = _anthropic_stop(completion)
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {**usage, "output_tokens": completion.completion_tokens},
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


def _response_object(
    dialect: VllmDialect,
    body: dict[str, Any],
    chat: ChatRequest,
    completion: Completion | None,
    status: str,
    rid: str | None = None,
    item_id: str | None = None,
) -> dict[str, Any]:
    """responses/protocol.py ResponsesResponse; ``completion`` None: not generated yet."""
    if completion is not None and status == "completed" and completion.finish_reason == "length":
        status = "incomplete"
    output = []
    if completion is not None:
        output.append(
            {
                "id": item_id or f"msg_{uuid.uuid4().hex}",
                "content": [
                    {
                        "annotations": [],
                        "text": completion.text,
                        "type": "output_text",
                        "logprobs": None,
                    }
                ],
                "role": "assistant",
                "status": "completed",
                "type": "message",
            }
        )
    out_tokens = completion.completion_tokens if completion is not None else 0
    return {
        "id": rid or f"resp_{uuid.uuid4().hex}",
        "created_at": int(time.time()),
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "metadata": body.get("metadata"),
        "model": dialect.response_model(chat),
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "background": False,
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "truncation": "disabled",
        "usage": None
        if completion is None
        else {
            "input_tokens": chat.prompt.tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat.prompt.tokens + out_tokens,
        },
        "user": None,
    }


async def _responses_events(
    state: SimState,
    dialect: VllmDialect,
    body: dict[str, Any],
    chat: ChatRequest,
    completion: Completion,
    arrived: float,
) -> AsyncIterator[bytes]:
    """responses/serving.py responses_stream_generator + streaming_events.py: created,
    in_progress, output_item.added, content_part.added, output_text.delta per token,
    output_text.done, content_part.done, output_item.done, completed (or incomplete); each
    with a rising sequence_number; SSE "event: TYPE" lines (responses/api_router.py)."""
    rid, item_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    number = 0

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal number
        payload = {**payload, "sequence_number": number}
        number += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode()

    pending = _response_object(dialect, body, chat, None, "in_progress", rid)
    yield event({"type": "response.created", "response": pending})
    yield event({"type": "response.in_progress", "response": pending})
    place = {"output_index": 0, "item_id": item_id}
    started = False
    async for piece in stream_tokens(state, chat, completion, arrived):
        if not started:
            started = True
            yield event(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {"id": item_id, "type": "message", "role": "assistant",
                             "content": [], "status": "in_progress"},
                }
            )  # fmt: skip
            yield event(
                {
                    "type": "response.content_part.added",
                    **place,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                }
            )
        if piece:
            yield event(
                {
                    "type": "response.output_text.delta",
                    **place,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                }
            )
    part = {"type": "output_text", "text": completion.text, "annotations": []}
    yield event(
        {"type": "response.output_text.done", **place, "content_index": 0,
         "text": completion.text, "logprobs": []}
    )  # fmt: skip
    yield event({"type": "response.content_part.done", **place, "content_index": 0, "part": part})
    yield event(
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {"id": item_id, "type": "message", "role": "assistant", "content": [part],
                     "status": "completed"},
        }
    )  # fmt: skip
    final = _response_object(dialect, body, chat, completion, "completed", rid, item_id)
    kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield event({"type": kind, "response": final})
