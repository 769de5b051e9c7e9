"""POST /v1/chat/completions, shared by both flavors; a Dialect holds what differs.

vLLM and Ollama answer the same OpenAI request with small differences that clients notice:
error shapes, ids, tool call ids, extra fields, how tool calls stream, what happens with too
many tokens. Each difference is in one Dialect method with the engine's real behaviour.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from msmall.simulator import generation as gen
from msmall.simulator.images import ImageError, ImageInfo, decode_data_url, inspect_image

if TYPE_CHECKING:
    from msmall.simulator.state import SimState


class ChatError(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        kind: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.param = param


@dataclass
class ChatRequest:
    model: str
    prompt: gen.Prompt
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None


@dataclass
class Completion:
    text: str
    tool_calls: list[gen.ToolCall]
    deltas: list[str]
    finish_reason: str
    completion_tokens: int


class Dialect:
    """What differs between engines. Subclasses: VllmDialect, OllamaDialect."""

    tool_id_style = "openai"

    def __init__(self, state: SimState) -> None:
        self.state = state

    def error(self, exc: ChatError) -> Response:
        raise NotImplementedError

    def check_model(self, name: str) -> None:
        raise NotImplementedError

    def check_images(self, count: int) -> None:
        raise NotImplementedError

    def image_error(self, exc: ImageError) -> ChatError:
        raise NotImplementedError

    def check_lengths(self, request: ChatRequest) -> None:
        """Context checks before generating (vLLM refuses; Ollama truncates silently)."""

    def tool_mode(self, request: ChatRequest) -> str:
        """'call' (tool_calls), 'text' (tool call as text), or 'none' (plain answer)."""
        return "call"

    def completion_id(self) -> str:
        return f"chatcmpl-{uuid.uuid4().hex}"

    def response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        raise NotImplementedError

    def chunk(self, cid: str, request: ChatRequest, delta: dict, finish: str | None) -> dict:
        raise NotImplementedError

    def tool_call_deltas(self, calls: list[gen.ToolCall]) -> list[dict]:
        raise NotImplementedError

    def first_delta(self) -> dict:
        return {"role": "assistant", "content": ""}

    def last_delta(self) -> dict:
        return {}

    def usage_chunk(self, cid: str, request: ChatRequest, usage: dict) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
            "choices": [],
            "usage": usage,
        }

    async def before_generation(self, request: ChatRequest) -> None:
        """Ollama loads the model on first use."""


async def handle_chat(request: Request, dialect: Dialect) -> Response:
    state = dialect.state
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return dialect.error(ChatError("Invalid JSON in the request body"))
    try:
        if not isinstance(body, dict):
            raise ChatError("The request body must be a JSON object")
        chat = parse_request(body, dialect)
        dialect.check_lengths(chat)
        await dialect.before_generation(chat)
        completion = complete(chat, dialect)
    except ChatError as exc:
        return dialect.error(exc)
    except gen.RequestError as exc:
        return dialect.error(ChatError(str(exc), param=exc.param))
    state.requests_served += 1
    state.prompt_tokens_total += chat.prompt.tokens
    state.generation_tokens_total += completion.completion_tokens
    if chat.stream:
        return StreamingResponse(
            stream_chunks(chat, completion, dialect), media_type="text/event-stream"
        )
    await state.sleep(state.config.ttft + state.config.tpot * max(0, len(completion.deltas) - 1))
    body = dialect.response_body(dialect.completion_id(), chat, completion)
    return JSONResponse(body)


def parse_request(body: dict[str, Any], dialect: Dialect) -> ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatError("Field required: model", param="model")
    dialect.check_model(model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError("Field required: messages (a non-empty list)", param="messages")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ChatError("tools must be a list", param="tools")
    prompt = gen.Prompt()
    image_urls: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ChatError("Each message must be an object", param="messages")
        role = str(message.get("role", ""))
        text, urls = _message_content(message.get("content"))
        image_urls += urls
        if message.get("tool_calls"):
            text += " " + json.dumps(message["tool_calls"])
        prompt.texts.append(text)
        prompt.last_role = role
        if role == "user":
            prompt.last_user_text = text
        if role == "tool":
            prompt.last_tool_result = text
    dialect.check_images(len(image_urls))
    for url in image_urls:
        try:
            prompt.images.append(_load_image(url))
        except ImageError as exc:
            raise dialect.image_error(exc) from exc
    prompt.tokens = (
        sum(gen.count_tokens(t) for t in prompt.texts)
        + gen.TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
        + sum(image.tokens for image in prompt.images)
        + (gen.count_tokens(json.dumps(tools)) if tools else 0)
    )
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ChatError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    stream_options = body.get("stream_options") or {}
    tool_choice = body.get("tool_choice")
    if tool_choice is None and tools:
        tool_choice = "auto"  # what vLLM's request validator and OpenAI do
    return ChatRequest(
        model=model,
        prompt=prompt,
        stream=bool(body.get("stream")),
        include_usage=bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        ),
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=tool_choice,
    )


def _message_content(content: Any) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ChatError("message content must be a string or a list of parts", param="messages")
    texts, urls = [], []
    for part in content:
        if not isinstance(part, dict):
            raise ChatError("each content part must be an object", param="messages")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise ChatError("image_url.url must be a string", param="messages")
            urls.append(url)
        else:
            raise ChatError(f"Unknown part type: {kind}", param="messages")
    return " ".join(texts), urls


def _load_image(url: str) -> ImageInfo:
    if url.startswith(("http://", "https://")):
        # No network beyond loopback: the simulator cannot fetch, and says so plainly.
        raise ImageError("the simulator accepts images only as base64 data URLs")
    return inspect_image(decode_data_url(url))


def complete(chat: ChatRequest, dialect: Dialect) -> Completion:
    function = None
    if chat.tools:
        mode = dialect.tool_mode(chat)
        function = gen.choose_tool(chat.tools, chat.tool_choice, chat.prompt)
        if function is not None:
            call = gen.ToolCall(
                name=str(function["name"]),
                arguments=gen.build_arguments(
                    function.get("parameters"), chat.prompt.last_user_text
                ),
                id=gen.tool_call_id(dialect.tool_id_style),
            )
            if mode == "call":
                tokens = gen.count_tokens(call.arguments_json) + 3
                return Completion("", [call], [], "tool_calls", tokens)
            text = gen.tools_as_text([call])
            deltas, finish = gen.limit(text, chat.max_tokens)
            return Completion("".join(deltas), [], deltas, finish, len(deltas))
    text = gen.answer_text(chat.prompt)
    deltas, finish = gen.limit(text, chat.max_tokens)
    return Completion("".join(deltas), [], deltas, finish, len(deltas))


def usage(chat: ChatRequest, completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": chat.prompt.tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": chat.prompt.tokens + completion.completion_tokens,
    }


def sse(payload: dict | str) -> bytes:
    # Compact, like pydantic's model_dump_json in vLLM.
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def stream_chunks(
    chat: ChatRequest, completion: Completion, dialect: Dialect
) -> AsyncIterator[bytes]:
    state = dialect.state
    cid = dialect.completion_id()
    await state.sleep(state.config.ttft)
    yield sse(dialect.chunk(cid, chat, dialect.first_delta(), None))
    if completion.tool_calls:
        for n, delta in enumerate(dialect.tool_call_deltas(completion.tool_calls)):
            if n:
                await state.sleep(state.config.tpot)
            yield sse(dialect.chunk(cid, chat, delta, None))
    else:
        for n, piece in enumerate(completion.deltas):
            if n:
                await state.sleep(state.config.tpot)
            yield sse(dialect.chunk(cid, chat, {"content": piece}, None))
    yield sse(dialect.chunk(cid, chat, dialect.last_delta(), completion.finish_reason))
    if chat.include_usage:
        yield sse(dialect.usage_chunk(cid, chat, usage(chat, completion)))
    yield sse("[DONE]")
