"""The vLLM 0.33 routes beyond chat and completions: /tokenize, /detokenize, /v1/responses,
/v1/messages (Anthropic style), /openapi.json and /docs.

Sources (vllm 0.33.0 wheel): entrypoints/serve/tokenize/protocol.py (TokenizeResponse,
DetokenizeResponse), entrypoints/openai/responses/protocol.py (ResponsesResponse),
entrypoints/anthropic/ (AnthropicMessagesResponse), FastAPI's /openapi.json and /docs that
vLLM's app keeps (api_server.py build_app).

Both /v1/responses and /v1/messages also stream (their own SSE event sequences), and both take
function tools and images as vLLM 0.33 converts them to a chat request (responses/utils.py,
anthropic/serving.py to_chat_completion_request): tool calls come back as ``function_call``
output items and ``tool_use`` content blocks.
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
from msmall.simulator.vllm_validation import (
    VLLMValidationError,
    _bad,
    _type_error,
    missing_error,
    model_validator_failure,
    responses_input_errors,
    type_errors,
    validation_failure,
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


def add_routes(
    routes: list, dialect: VllmDialect, logged_routes: tuple[tuple[str, str], ...]
) -> None:
    """Add the routes beyond chat; `logged_routes` (what the startup log announces) is what
    /openapi.json lists, as vLLM's app does."""
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
        check_responses_body(body)
        chat_body = responses_to_chat(body)
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
        check_anthropic_body(body)
        try:
            chat_body = anthropic_to_chat(body)
            if body.get("stream"):
                chat, completion = await prepare(chat_body, dialect)
                return StreamingResponse(
                    _anthropic_events(state, dialect, chat, completion, arrived),
                    media_type="text/event-stream",
                )
            chat, completion = await generate_whole(chat_body, dialect, arrived)
        except ChatError as exc:
            if exc.kind == "Bad Request":
                raise  # a RequestValidationError: vLLM's own handler answers it
            return anthropic_error(exc)
        except gen.RequestError as exc:
            return anthropic_error(ChatError(str(exc), param=exc.param))
        return JSONResponse(_anthropic_message(dialect, chat, completion))

    async def openapi(request: Request) -> Response:
        from msmall.simulator.config import VLLM_VERSION

        paths: dict[str, dict] = {}
        for path, methods in logged_routes:
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


# /v1/responses ---------------------------------------------------------------------------------


def check_responses_body(body: dict[str, Any]) -> None:
    """responses/protocol.py ResponsesRequest.check_tool_usage (a "before" model validator, so
    a RequestValidationError: 400 "Bad Request")."""
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    has_tools = isinstance(tools, list) and len(tools) > 0
    named = isinstance(choice, dict) and choice.get("type") in ("function", "custom")
    error = None
    if not has_tools:
        if choice == "required":
            error = VLLMValidationError(
                "Tool choice 'required' must be specified with 'tools' parameter.",
                parameter="tool_choice",
            )
        elif named:
            error = VLLMValidationError(
                "Tool choice 'function' not found in 'tools' parameter.", parameter="tool_choice"
            )
    elif named:
        names = {t.get("name") for t in tools if isinstance(t, dict)}
        # _resolve_named_tool_choice: an unknown (or missing) name is refused the same way.
        if not choice.get("name") or choice["name"] not in names:
            error = VLLMValidationError(
                "Tool choice 'function' not found in 'tools' parameter.", parameter="tool_choice"
            )
    if error is not None:
        raise model_validator_failure(error, body)
    if "input" not in body:
        raise validation_failure([missing_error(("input",), body)], "body.input")
    errors = responses_input_errors(body["input"])
    if errors:
        raise validation_failure(errors, "body.input")


def _response_tool_choice(body: dict[str, Any]) -> Any:
    # check_tool_usage: without tools, "auto" (the default) becomes "none".
    choice = body.get("tool_choice", "auto")
    if not (isinstance(body.get("tools"), list) and body["tools"]) and choice == "auto":
        return "none"
    return choice


def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request vLLM renders a Responses request as (responses/utils.py
    construct_input_messages, construct_chat_messages_with_tool_call,
    convert_tool_responses_to_completions_format)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for item in raw:
            message = _message_from_item(item, messages[-1] if messages else None)
            if message is not None:
                messages.append(message)
    else:
        raise validation_failure(
            [_type_error("string_type", "input", "Input should be a valid string", raw)],
            "body.input",
        )
    chat_body: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat_body["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "stop", "ignore_eos"):
        if body.get(key) is not None:
            chat_body[key] = body[key]
    tools = [
        {
            "type": "function",
            "function": {k: v for k, v in tool.items() if k not in ("type", "strict")},
        }
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    if tools:
        chat_body["tools"] = tools
        choice = _response_tool_choice(body)
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        chat_body["tool_choice"] = choice
    text_format = (
        (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    )
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        chat_body["response_format"] = {"type": "json_schema", "json_schema": text_format}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat_body["response_format"] = {"type": "json_object"}
    return chat_body


def _message_from_item(item: Any, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """responses/utils.py _construct_message_from_response_item: None when the item was merged
    into the previous assistant message."""
    if not isinstance(item, dict):
        raise _bad(VLLMValidationError("Unsupported input item type: None", parameter="input"))
    kind = item.get("type")
    assistant = previous if previous is not None and previous.get("role") == "assistant" else None
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
        }
        if assistant is not None:
            assistant.setdefault("tool_calls", []).append(call)
            return None
        return {"role": "assistant", "tool_calls": [call]}
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        return {
            "role": "tool",
            "content": output if isinstance(output, str) else json.dumps(output),
            "tool_call_id": item.get("call_id"),
        }
    if kind == "reasoning":
        return None  # the simulated model does not reason
    if "role" in item:
        content = item.get("content")
        if isinstance(content, list):
            content = [_chat_part(part) for part in content]
        return {"role": item["role"], "content": content}
    raise _bad(VLLMValidationError(f"Unsupported input item type: {kind}", parameter="input"))


def _chat_part(part: Any) -> Any:
    """A Responses content part as the chat renderer reads it (renderers/chat_utils/
    chat_message.py: "input_image" is an image_url part whose URL is ``image_url``)."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        return {
            "type": "image_url",
            "image_url": {"url": url.get("url") if isinstance(url, dict) else url},
        }
    return part


def _function_call_item(call: gen.ToolCall, item_id: str, status: str) -> dict[str, Any]:
    # openai's ResponseFunctionToolCall as utils.py build_response_output_items fills it: the
    # parser's (9-character Mistral) id is the call_id; the item's own id is "fc_...".
    return {
        "arguments": call.arguments_json,
        "call_id": call.id,
        "name": call.name,
        "type": "function_call",
        "id": item_id,
        "namespace": None,
        "status": status,
    }


def _response_object(
    dialect: VllmDialect,
    body: dict[str, Any],
    chat: ChatRequest,
    completion: Completion | None,
    status: str,
    rid: str | None = None,
    item_ids: list[str] | None = None,
) -> dict[str, Any]:
    """responses/protocol.py ResponsesResponse.from_request; ``completion`` None: not generated
    yet (the created / in_progress events)."""
    if completion is not None and status == "completed" and completion.finish_reason == "length":
        status = "incomplete"
    output: list[dict[str, Any]] = []
    if completion is not None:
        ids = iter(item_ids or [])
        item_status = "incomplete" if completion.finish_reason == "length" else "completed"
        if completion.text and not completion.tool_calls:
            output.append(
                {
                    "id": next(ids, None) or f"msg_{uuid.uuid4().hex}",
                    "content": [
                        {
                            "annotations": [],
                            "text": completion.text,
                            "type": "output_text",
                            "logprobs": None,
                        }
                    ],
                    "role": "assistant",
                    "status": item_status,
                    "type": "message",
                }
            )
        for call in completion.tool_calls:
            item_id = next(ids, None) or f"fc_{uuid.uuid4().hex}"
            output.append(_function_call_item(call, item_id, item_status))
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
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": _response_tool_choice(body),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "background": False,
        # sampling_params.max_tokens: what get_max_tokens left when the request set none.
        "max_output_tokens": chat.limits.max_tokens,
        "max_tool_calls": body.get("max_tool_calls"),
        "previous_response_id": None,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": body.get("text"),
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": None
        if completion is None
        else {
            "input_tokens": chat.prompt.tokens,
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 0,
                "input_tokens_per_turn": [],
                "cached_tokens_per_turn": [],
            },
            "output_tokens": out_tokens,
            "output_tokens_details": {
                "reasoning_tokens": 0,
                "tool_output_tokens": 0,
                "output_tokens_per_turn": [],
                "tool_output_tokens_per_turn": [],
            },
            "total_tokens": chat.prompt.tokens + out_tokens,
        },
        "user": body.get("user"),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


async def _responses_events(
    state: SimState,
    dialect: VllmDialect,
    body: dict[str, Any],
    chat: ChatRequest,
    completion: Completion,
    arrived: float,
) -> AsyncIterator[bytes]:
    """responses/serving.py responses_stream_generator + _process_simple_streaming_events, with
    streaming_events.py SimpleStreamingEventProcessor: created, in_progress; then per output
    item its "open" events, its deltas and its "done" events (text: output_item.added,
    content_part.added, output_text.delta..., output_text.done, content_part.done,
    output_item.done; a function call: output_item.added, function_call_arguments.delta...,
    function_call_arguments.done, output_item.done); then completed (or incomplete). Each
    event has a rising sequence_number; SSE "event: TYPE" lines (responses/api_router.py)."""
    rid = f"resp_{uuid.uuid4().hex}"
    number = 0
    status = "incomplete" if completion.finish_reason == "length" else "completed"

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal number
        payload = {**payload, "sequence_number": number}
        number += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode()

    pending = _response_object(dialect, body, chat, None, "in_progress", rid)
    yield event({"type": "response.created", "response": pending})
    yield event({"type": "response.in_progress", "response": pending})
    item_ids: list[str] = []
    if completion.tool_calls:
        # parser/mistral.py streams a call as its name (with the id), then argument pieces:
        # VllmDialect.tool_call_deltas.
        deltas = dialect.tool_call_deltas(completion.tool_calls)
        index = -1
        args = ""
        async for delta in stream_tokens(state, chat, completion, arrived, deltas):
            call = delta["tool_calls"][0]
            if "id" in call:
                if index >= 0:
                    for done in _call_done(
                        completion.tool_calls[index], item_ids, index, args, "completed"
                    ):
                        yield event(done)
                index, args = call["index"], ""
                item_ids.append(f"fc_{uuid.uuid4().hex}")
                opened = {
                    **_function_call_item(
                        completion.tool_calls[index], item_ids[-1], "in_progress"
                    ),
                    "arguments": "",
                }
                yield event(
                    {"type": "response.output_item.added", "output_index": index, "item": opened}
                )
                continue
            piece = call["function"]["arguments"]
            args += piece
            yield event(
                {"type": "response.function_call_arguments.delta", "delta": piece,
                 "item_id": item_ids[-1], "output_index": index}
            )  # fmt: skip
        if index >= 0:
            for done in _call_done(completion.tool_calls[index], item_ids, index, args, status):
                yield event(done)
    else:
        item_id = f"msg_{uuid.uuid4().hex}"
        place = {"output_index": 0, "item_id": item_id}
        started = False
        async for piece in stream_tokens(state, chat, completion, arrived):
            if not piece:
                continue  # resolve_target_state: an empty content delta opens nothing
            if not started:
                started = True
                item_ids.append(item_id)
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
                        "part": {"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []},
                    }
                )  # fmt: skip
            yield event(
                {
                    "type": "response.output_text.delta",
                    **place,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                }
            )
        if started:
            # emit_simple_content_done
            part = {"type": "output_text", "text": completion.text, "annotations": [],
                    "logprobs": None}  # fmt: skip
            yield event(
                {"type": "response.output_text.done", **place, "content_index": 0,
                 "text": completion.text, "logprobs": []}
            )  # fmt: skip
            yield event(
                {"type": "response.content_part.done", **place, "content_index": 0, "part": part}
            )
            yield event(
                {
                    "type": "response.output_item.done",
                    "output_index": 0,
                    "item": {"id": item_id, "type": "message", "role": "assistant",
                             "content": [part], "status": status},
                }
            )  # fmt: skip
    final = _response_object(dialect, body, chat, completion, "completed", rid, item_ids)
    kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield event({"type": kind, "response": final})


def _call_done(
    call: gen.ToolCall, item_ids: list[str], index: int, args: str, status: str
) -> list[dict[str, Any]]:
    """streaming_events.py emit_simple_tool_call_done."""
    return [
        {
            "type": "response.function_call_arguments.done",
            "arguments": args,
            "item_id": item_ids[index],
            "output_index": index,
            "name": call.name,
        },
        {
            "type": "response.output_item.done",
            "output_index": index,
            "item": _function_call_item(call, item_ids[index], status),
        },
    ]


# /v1/messages (Anthropic) ----------------------------------------------------------------------


def check_anthropic_body(body: dict[str, Any]) -> None:
    """anthropic/protocol.py AnthropicMessagesRequest's field types (the same checks as the
    chat request's) and its max_tokens field_validator: pydantic errors, so vLLM's validation
    handler (not the Anthropic error shape) answers them."""
    errors = type_errors(body, "anthropic")
    if errors:
        raise validation_failure(errors, errors[0]["loc"])
    value = int(float(body["max_tokens"]))  # lax mode: "5" and 5.0 are 5
    if value <= 0:
        error = {"type": "value_error", "loc": "body.max_tokens",
                 "msg": "Value error, max_tokens must be positive",
                 "input": str(body["max_tokens"]),
                 "ctx": {"error": ValueError("max_tokens must be positive")}}  # fmt: skip
        raise validation_failure([error], "body.max_tokens")
    body["max_tokens"] = value


def anthropic_error(exc: ChatError) -> Response:
    """anthropic/api_router.py translate_error_response: the ErrorResponse vLLM built, in
    Anthropic's shape and vocabulary (protocol.py translate_error_type)."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
             503: "overloaded_error"}  # fmt: skip
    kind = kinds.get(exc.status) or ("api_error" if exc.status >= 500 else "invalid_request_error")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": exc.message}}, status_code=exc.status
    )


def anthropic_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """anthropic/serving.py to_chat_completion_request: system, messages (text, image, tool_use,
    tool_result blocks), max_tokens, stop_sequences, tools and tool_choice."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role, content = msg.get("role"), msg.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        out: dict[str, Any] = {"role": role}
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and block.get("text"):
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and block.get("source"):
                parts.append(
                    {"type": "image_url", "image_url": {"url": _image_url(block["source"])}}
                )
            elif kind == "tool_use":
                # _convert_tool_use_block
                calls.append(
                    {
                        "id": block.get("id") or f"call_{int(time.time())}",
                        "type": "function",
                        "function": {"name": block.get("name") or "",
                                     "arguments": json.dumps(block.get("input") or {})},
                    }
                )  # fmt: skip
            elif kind == "tool_result" and role == "user":
                # _convert_user_tool_result: a tool message of its own, before this one.
                result = block.get("content")
                if isinstance(result, list):
                    result = "\n".join(
                        str(i.get("text", "")) for i in result
                        if isinstance(i, dict) and i.get("type") == "text"
                    )  # fmt: skip
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                     "content": result or ""}
                )  # fmt: skip
            elif kind == "tool_result":
                parts.append({"type": "text", "text": f"Tool result: {block.get('content') or ''}"})
        if calls:
            out["tool_calls"] = calls
        if parts:
            out["content"] = (
                parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
            )
        # _convert_messages: a user message left without content (only tool results) is dropped.
        if not (role == "user" and "content" not in out):
            messages.append(out)
    chat_body: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    if body.get("stop_sequences"):
        chat_body["stop"] = body["stop_sequences"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat_body[key] = body[key]
    # _convert_tool_choice, then _convert_tools ("auto" when tools come without a choice).
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat_body["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
            "tool": {"type": "function", "function": {"name": choice.get("name")}},
        }.get(choice.get("type"))
    tools = body.get("tools")
    if isinstance(tools, list):
        chat_body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": {"type": "object", **(tool.get("input_schema") or {})},
                },
            }
            for tool in tools
            if isinstance(tool, dict)
        ]
        if chat_body.get("tool_choice") is None:
            chat_body["tool_choice"] = "auto"
    return chat_body


def _image_url(source: dict[str, Any]) -> str:
    # serving.py _convert_image_source_to_url
    if source.get("type") == "url":
        return str(source.get("url", ""))
    return f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"


def _anthropic_stop(completion: Completion) -> tuple[str, str | None]:
    """serving.py _to_anthropic_stop_reason: max_tokens wins; a complete tool call is
    "tool_use" (also for a named tool, which the chat layer finishes with "stop")."""
    if completion.finish_reason == "length":
        return "max_tokens", None
    if completion.tool_calls:
        return "tool_use", None
    if completion.stop_reason is not None:
        return "stop_sequence", completion.stop_reason
    return "end_turn", None


def _anthropic_message(dialect: VllmDialect, chat: ChatRequest, completion: Completion) -> dict:
    """serving.py messages_full_converter, dumped with exclude_none (api_router.py): the id is
    the chat completion's ("chatcmpl-..."), an answer with no content is one empty text block."""
    reason, sequence = _anthropic_stop(completion)
    content: list[dict[str, Any]] = []
    if completion.text and not completion.tool_calls:
        content.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    message: dict[str, Any] = {
        "id": dialect.completion_id("chat", chat),
        "type": "message",
        "role": "assistant",
        "content": content or [{"type": "text", "text": ""}],
        "model": dialect.response_model(chat),
        "stop_reason": reason,
        "usage": {
            "input_tokens": chat.prompt.tokens,
            "output_tokens": completion.completion_tokens,
        },
    }
    if sequence is not None:
        message["stop_sequence"] = sequence
    return message


def _event(name: str, payload: dict[str, Any]) -> bytes:
    # entrypoints/anthropic/serving.py wrap_data_with_event.
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _anthropic_events(
    state: SimState,
    dialect: VllmDialect,
    chat: ChatRequest,
    completion: Completion,
    arrived: float,
) -> AsyncIterator[bytes]:
    """entrypoints/anthropic/serving.py message_stream_converter over the chat stream (which
    it asks for with include_usage and continuous_usage_stats): message_start; per block
    content_block_start, its deltas (text_delta per token; input_json_delta per argument
    piece of a tool_use block) and content_block_stop; then message_delta (stop_reason,
    usage) and message_stop. Empty content opens no block."""
    usage = {"input_tokens": chat.prompt.tokens, "output_tokens": 0}
    yield _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": dialect.completion_id("chat", chat),
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
    block = -1  # the open block's index
    if completion.tool_calls:
        deltas = dialect.tool_call_deltas(completion.tool_calls)
        async for delta in stream_tokens(state, chat, completion, arrived, deltas):
            call = delta["tool_calls"][0]
            if "id" in call:
                if block >= 0:
                    yield _event(
                        "content_block_stop", {"type": "content_block_stop", "index": block}
                    )
                block += 1
                start = {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                         "input": {}}  # fmt: skip
                yield _event(
                    "content_block_start",
                    {"type": "content_block_start", "content_block": start, "index": block},
                )
                continue
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": call["function"]["arguments"],
                    },
                    "index": block,
                },
            )
    else:
        async for piece in stream_tokens(state, chat, completion, arrived):
            if not piece:
                continue
            if block < 0:
                block = 0
                yield _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "content_block": {"type": "text", "text": ""},
                        "index": 0,
                    },
                )
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "delta": {"type": "text_delta", "text": piece},
                    "index": 0,
                },
            )
    if block >= 0:
        yield _event("content_block_stop", {"type": "content_block_stop", "index": block})
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
