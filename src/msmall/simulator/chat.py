"""POST /v1/chat/completions and /v1/completions, shared by both flavors; a Dialect holds what
differs.

vLLM and Ollama answer the same OpenAI request with small differences that clients notice:
error shapes, ids, tool call ids, extra fields, how tool calls stream, what happens with too
many tokens. Each difference is in one Dialect method with the engine's real behaviour.

Timing: every request is admitted by the load model (engine.EngineModel) and its tokens are due
at deadlines (first token ``ttft`` after admission, then one ``tpot`` apart, ``tpot`` growing
with the running batch above the knee), so measured TTFT/TPOT match the injected values.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from msmall.simulator import generation as gen
from msmall.simulator.engine import Sequence
from msmall.simulator.images import ImageError, ImageInfo, decode_data_url, inspect_image
from msmall.simulator.streaming import TokenStream

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
    continuous_usage: bool = False
    max_tokens: int | None = None
    # Which field max_tokens came from, for error messages ("max_tokens" or
    # "max_completion_tokens", vllm/entrypoints/openai/chat_completion/protocol.py).
    max_tokens_param: str = "max_tokens"
    limits: gen.OutputLimits = field(default_factory=gen.OutputLimits)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    # Structured output: "json" (any JSON object) or a JSON schema dict; None: free text.
    structured: Any = None
    # "chat" (/v1/chat/completions) or "text" (/v1/completions).
    kind: str = "chat"
    # The X-Request-Id header or the body's request_id (vLLM uses it in the response id).
    request_id: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    tool_calls: list[gen.ToolCall]
    deltas: list[str]
    finish_reason: str
    completion_tokens: int
    stop_reason: str | None = None
    # tool_choice "required" or a named function: vLLM answers content "" with the calls.
    forced: bool = False
    # The answer ended on the model's EOS token, which vLLM counts in completion_tokens (and
    # generates in a decode step of its own): see Dialect.counts_eos.
    eos: bool = False


class Dialect:
    """What differs between engines. Subclasses: VllmDialect, OllamaDialect."""

    tool_id_style = "openai"
    # vLLM v1 counts the EOS token it sampled: v1/core/sched/scheduler.py
    # _update_request_with_output appends every sampled token before check_stop
    # (sched/utils.py) finishes on EOS, so the output's token_ids, hence usage
    # (chat_completion/serving.py, stream_processor.py num_output_tokens) and
    # vllm:generation_tokens_total (v1/metrics/stats.py IterationStats.update_from_output),
    # include it. VllmDialect sets this.
    counts_eos = False
    # vLLM's KV cache is paged (blocks taken as the answer grows, preemption when they run
    # out); Ollama's slots hold the whole answer from the start (engine.EngineModel).
    paged_kv = False
    # A chat stream cut by the length limit puts its finish_reason on the last token's chunk
    # (vLLM) instead of a chunk of its own after it (Ollama's /v1): see _stream.
    finish_on_last_token = False

    def __init__(self, state: SimState) -> None:
        self.state = state

    def error(self, exc: ChatError) -> Response:
        raise NotImplementedError

    def check_request(self, request: Request, body: Any) -> None:
        """Engine-specific request validation before the fields are read."""

    def check_model(self, name: str) -> None:
        raise NotImplementedError

    def default_model(self) -> str | None:
        """The model a request without ``model`` gets; None: ``model`` is required."""
        return None

    def response_model(self, request: ChatRequest) -> str:
        return request.model

    def check_images(self, count: int) -> None:
        raise NotImplementedError

    def image_error(self, exc: ImageError) -> ChatError:
        raise NotImplementedError

    def check_lengths(self, request: ChatRequest) -> None:
        """Context checks before generating (vLLM refuses; Ollama truncates silently)."""

    def tool_mode(self, request: ChatRequest) -> str:
        """'call' (tool_calls), 'text' (tool call as text), or 'none' (plain answer)."""
        return "call"

    def completion_id(self, kind: str = "chat", chat: ChatRequest | None = None) -> str:
        # serve/engine/serving.py _base_request_id: the X-Request-Id header, else the body's
        # request_id, else a random uuid; chat_completion/serving.py prefixes "chatcmpl-".
        base = chat.request_id if chat is not None and chat.request_id else uuid.uuid4().hex
        return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{base}"

    def response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        raise NotImplementedError

    def text_response_body(self, cid: str, request: ChatRequest, completion: Completion) -> dict:
        raise ChatError("Not Found", 404, "NotFoundError")

    def chunk(
        self, cid: str, request: ChatRequest, delta: dict, finish: str | None, index: int = 0
    ) -> dict:
        raise NotImplementedError

    def text_chunk(
        self, cid: str, request: ChatRequest, text: str, finish: str | None, index: int = 0
    ) -> dict:
        raise NotImplementedError

    def tool_call_deltas(self, calls: list[gen.ToolCall]) -> list[dict]:
        raise NotImplementedError

    def first_delta(self) -> dict | None:
        """A chunk of its own before the first token; None: the role rides on the first token."""
        return {"role": "assistant", "content": ""}

    def last_delta(self) -> dict:
        return {}

    def usage_chunk(self, cid: str, request: ChatRequest, usage: dict) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk" if request.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": self.response_model(request),
            "choices": [],
            "usage": usage,
        }

    async def before_generation(self, request: ChatRequest) -> None:
        """Ollama loads the model on first use."""

    def tool_finish(self, request: ChatRequest) -> str:
        # vllm/entrypoints/serve/utils/tool_calls_utils.py resolve_finish_reason: a forced
        # named tool reports "stop", as OpenAI does.
        return "stop" if isinstance(request.tool_choice, dict) else "tool_calls"

    def headers(self, request: Request) -> dict[str, str]:
        return {}


async def handle_chat(request: Request, dialect: Dialect, kind: str = "chat") -> Response:
    state = dialect.state
    # server.StampedH11: when the request's bytes arrived (else: now, e.g. in-process ASGI).
    arrived = (request.scope.get("state") or {}).get("msmall_arrived") or time.monotonic()
    await state.engine.turn()
    try:
        dialect.check_request(request, None)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ChatError("Invalid JSON in the request body") from None
        if not isinstance(body, dict):
            raise ChatError("The request body must be a JSON object")
        dialect.check_request(request, body)
        chat = parse_request(body, dialect, kind)
        rid = request.headers.get("x-request-id") or body.get("request_id")
        chat.request_id = rid if isinstance(rid, str) and rid else None
        dialect.check_lengths(chat)
        await dialect.before_generation(chat)
        completion = complete(chat, dialect)
    except ChatError as exc:
        return dialect.error(exc)
    except gen.RequestError as exc:
        return dialect.error(ChatError(str(exc), param=exc.param))
    headers = dialect.headers(request)
    state.requests_served += 1
    state.prompt_tokens_total += chat.prompt.tokens
    state.generation_tokens_total += completion.completion_tokens * chat.n
    if chat.stream:
        return TokenStream(
            stream_chunks(chat, completion, dialect, arrived),
            media_type="text/event-stream",
            headers=headers,
        )
    seq = await admit(dialect, chat, completion, arrived)
    try:
        await _run_to_end(state, seq, max(1, completion.completion_tokens))
    finally:
        seq.finish()
    cid = dialect.completion_id(chat.kind, chat)
    if chat.kind == "text":
        return JSONResponse(dialect.text_response_body(cid, chat, completion), headers=headers)
    return JSONResponse(dialect.response_body(cid, chat, completion), headers=headers)


async def admit(
    dialect: Dialect, chat: ChatRequest, completion: Completion, arrived: float
) -> Sequence:
    """A place in the running batch (engine.EngineModel): vLLM's paged KV cache holds the
    prompt and grows with the answer; Ollama's requests reserve their whole answer."""
    reserve = 0 if dialect.paged_kv else chat.prompt.tokens + completion.completion_tokens * chat.n
    return await dialect.state.engine.admit(
        chat.prompt.tokens, arrived, width=chat.n, reserve=reserve
    )


async def prepare(body: dict[str, Any], dialect: Dialect) -> tuple[ChatRequest, Completion]:
    """Parse, check and plan the answer to a chat body (counted as served)."""
    state = dialect.state
    chat = parse_request(body, dialect)
    dialect.check_lengths(chat)
    await dialect.before_generation(chat)
    completion = complete(chat, dialect)
    state.requests_served += 1
    state.prompt_tokens_total += chat.prompt.tokens
    state.generation_tokens_total += completion.completion_tokens
    return chat, completion


async def stream_tokens(
    state: SimState,
    chat: ChatRequest,
    completion: Completion,
    arrived: float,
    items: list[Any] | None = None,
) -> AsyncIterator[Any]:
    """The answer's tokens (or ``items``, e.g. tool-call deltas, one per token), each when it
    is due (for the vLLM routes that wrap chat: a paged KV cache)."""
    seq = await state.engine.admit(chat.prompt.tokens, arrived)
    try:
        await seq.wait_first(state.stop)
        for step, piece in enumerate(completion.deltas if items is None else items):
            if step:
                await seq.wait_next(state.stop)
            seq.emitted()
            yield piece
        await _eos_step(state, seq, completion)
    finally:
        seq.finish()


async def _eos_step(state: SimState, seq: Sequence, completion: Completion) -> None:
    """The decode step that samples the EOS token (no text): what ends the stream comes then."""
    if completion.eos:
        await seq.wait_next(state.stop)
        seq.emitted()


async def generate_whole(
    body: dict[str, Any], dialect: Dialect, arrived: float | None = None
) -> tuple[ChatRequest, Completion]:
    """A chat body answered in full (no stream), timed by the load model: for the routes that
    wrap chat (/v1/responses, /v1/messages). Raises ChatError / gen.RequestError."""
    state = dialect.state
    arrived = time.monotonic() if arrived is None else arrived
    chat, completion = await prepare(body, dialect)
    seq = await admit(dialect, chat, completion, arrived)
    try:
        await _run_to_end(state, seq, max(1, completion.completion_tokens))
    finally:
        seq.finish()
    return chat, completion


async def _run_to_end(state: SimState, seq: Sequence, tokens: int) -> None:
    """Wait until the last token of a non-streamed answer is due."""
    engine = state.engine
    if engine.ttft <= 0 and engine.tpot <= 0:
        seq.emitted(tokens)
        return
    await seq.wait_first(state.stop)
    seq.emitted()
    for _ in range(tokens - 1):
        # One deadline per token, so a batch that grows meanwhile slows the rest down.
        await seq.wait_next(state.stop)
    if tokens > 1:
        seq.emitted(tokens - 1)


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ChatError(f"{name} must be an integer", param=name)
    return int(value)


def parse_request(body: dict[str, Any], dialect: Dialect, kind: str = "chat") -> ChatRequest:
    model = body.get("model")
    if model is None:
        model = dialect.default_model()
    if not isinstance(model, str) or not model:
        raise ChatError("Field required: model", param="model")
    dialect.check_model(model)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ChatError("tools must be a list", param="tools")
    prompt = gen.Prompt()
    image_urls: list[str] = []
    if kind == "text":
        text = _completion_prompt(body.get("prompt"))
        prompt.texts.append(text)
        prompt.last_role = "user"
        prompt.last_user_text = text
        prompt.tokens = gen.count_tokens(text)
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ChatError("Field required: messages (a non-empty list)", param="messages")
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
    # max_completion_tokens wins over max_tokens (serving.py create_chat_completion).
    param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _int_field(body, param)
    min_tokens = _int_field(body, "min_tokens") or 0
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ChatError("stop must be a string or a list of strings", param="stop")
    if any(not s for s in stop):
        # vllm/sampling_params.py _verify_args
        raise ChatError("stop cannot contain an empty string.")
    n = _int_field(body, "n")
    stream_options = body.get("stream_options") or {}
    tool_choice = body.get("tool_choice")
    if tool_choice is None and tools:
        tool_choice = "auto"  # what vLLM's request validator and OpenAI do
    top_logprobs = _int_field(body, "top_logprobs") or 0
    logprobs = body.get("logprobs")
    if kind == "text" and isinstance(logprobs, int) and not isinstance(logprobs, bool):
        top_logprobs, logprobs = logprobs, True
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    return ChatRequest(
        model=model,
        prompt=prompt,
        stream=bool(body.get("stream")),
        include_usage=include_usage,
        continuous_usage=include_usage
        and bool(isinstance(stream_options, dict) and stream_options.get("continuous_usage_stats")),
        max_tokens=max_tokens,
        max_tokens_param=param,
        limits=gen.OutputLimits(
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            ignore_eos=bool(body.get("ignore_eos")),
            stop=stop,
        ),
        tools=tools,
        tool_choice=tool_choice,
        n=1 if n is None else n,
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs,
        structured=structured_format(body),
        kind=kind,
        body=body,
    )


def structured_format(body: dict[str, Any]) -> Any:
    """ "json", a JSON schema, or None, from ``response_format`` (OpenAI), ``structured_outputs``
    / ``guided_json`` (vLLM) or ``format`` (Ollama)."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_object":
            return "json"
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema")
            if isinstance(js, dict):
                schema = js.get("schema", js.get("json_schema"))
                return schema if isinstance(schema, dict) else "json"
    so = body.get("structured_outputs")
    if isinstance(so, dict) and so.get("json") is not None:
        value = so["json"]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return "json"
        return value if isinstance(value, dict) else "json"
    if isinstance(body.get("guided_json"), dict):
        return body["guided_json"]
    fmt = body.get("format")
    if fmt == "json":
        return "json"
    if isinstance(fmt, dict):
        return fmt
    return None


def _completion_prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value[0]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return " ".join(f"t{v}" for v in value)
    raise ChatError(
        "prompt must be a string, a list of strings or a list of token ids", param="prompt"
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
    if chat.tools and chat.kind == "chat":
        mode = dialect.tool_mode(chat)
        function = gen.choose_tool(chat.tools, chat.tool_choice, chat.prompt)
        if function is not None:
            forced = chat.tool_choice == "required" or isinstance(chat.tool_choice, dict)
            call = gen.ToolCall(
                name=str(function["name"]),
                arguments=gen.build_arguments(
                    function.get("parameters"), chat.prompt.last_user_text
                ),
                id=gen.tool_call_id(dialect.tool_id_style),
            )
            if mode == "call" or forced:
                # [TOOL_CALLS], the name, [ARGS] and the arguments; then the model's EOS.
                eos = dialect.counts_eos
                tokens = gen.count_tokens(call.arguments_json) + 3 + eos
                finish = dialect.tool_finish(chat)
                return Completion("", [call], [], finish, tokens, forced=forced, eos=eos)
            shaped = gen.shape(gen.tools_as_text([call]), chat.limits, pad=False)
            return _completion(shaped, dialect)
    if chat.structured is not None:
        schema = None if chat.structured == "json" else chat.structured
        text = gen.json_answer(schema, chat.prompt.last_user_text)
        return _completion(gen.shape(text, chat.limits, pad=False), dialect)
    return _completion(gen.shape(gen.answer_text(chat.prompt), chat.limits), dialect)


def _completion(shaped: gen.Shaped, dialect: Dialect) -> Completion:
    text = "".join(shaped.deltas)
    # Finished "stop" without a stop string: the model sampled its EOS (not under
    # ignore_eos, which only ends on the length limit).
    eos = dialect.counts_eos and shaped.finish_reason == "stop" and shaped.stop_reason is None
    if shaped.generated is not None:
        tokens = shaped.generated
    else:
        tokens = gen.token_count(shaped.deltas) + eos
    return Completion(
        text, [], shaped.deltas, shaped.finish_reason, tokens, shaped.stop_reason, eos=eos
    )


def usage(chat: ChatRequest, completion: Completion, generated: int | None = None) -> dict:
    out = completion.completion_tokens * chat.n if generated is None else generated
    return {
        "prompt_tokens": chat.prompt.tokens,
        "total_tokens": chat.prompt.tokens + out,
        "completion_tokens": out,
    }


def logprobs_content(deltas: list[str], top: int) -> list[dict]:
    """vLLM's ChatCompletionLogProbsContent per token (chat_completion/protocol.py): the sampled
    token first in top_logprobs, the alternatives less likely."""
    out = []
    for n, piece in enumerate(deltas):
        logprob = -round(0.01 + (n % 7) * 0.013, 4)
        entry: dict[str, Any] = {
            "token": piece,
            "logprob": logprob,
            "bytes": list(piece.encode()),
            "top_logprobs": [],
        }
        for rank in range(top):
            token = piece if rank == 0 else f"{piece.strip() or 'x'}{rank}"
            entry["top_logprobs"].append(
                {
                    "token": token,
                    "logprob": logprob if rank == 0 else round(logprob - 1.5 * rank, 4),
                    "bytes": list(token.encode()),
                }
            )
        out.append(entry)
    return out


def text_logprobs(deltas: list[str], top: int) -> dict:
    """The legacy completions logprobs object (vllm completion/protocol.py CompletionLogProbs)."""
    offsets, pos = [], 0
    for piece in deltas:
        offsets.append(pos)
        pos += len(piece)
    content = logprobs_content(deltas, top)
    return {
        "text_offset": offsets,
        "token_logprobs": [c["logprob"] for c in content],
        "tokens": deltas,
        "top_logprobs": [{t["token"]: t["logprob"] for t in c["top_logprobs"]} for c in content]
        if top
        else None,
    }


_MARK = "\x01msmall-piece\x01"


def sse(payload: dict | str) -> bytes:
    # Compact, like pydantic's model_dump_json in vLLM.
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def stream_chunks(
    chat: ChatRequest, completion: Completion, dialect: Dialect, arrived: float
) -> AsyncIterator[bytes]:
    seq = await admit(dialect, chat, completion, arrived)
    try:
        async for item in _stream(chat, completion, dialect, seq):
            yield item
    finally:
        seq.finish()


async def _stream(
    chat: ChatRequest, completion: Completion, dialect: Dialect, seq: Sequence
) -> AsyncIterator[bytes]:
    state = dialect.state
    cid = dialect.completion_id(chat.kind, chat)
    choices = range(chat.n)
    generated = 0

    def with_usage(chunk: dict) -> dict:
        # stream_options.continuous_usage_stats: every chunk carries the usage so far
        # (serving.py chat_completion_stream_generator, include_continuous_usage).
        if chat.continuous_usage:
            chunk["usage"] = usage(chat, completion, generated)
        return chunk

    # The hot path of a load test: a middle token's chunk is a JSON template with the text
    # spliced in (one json.dumps of a string instead of a whole dict per token). The chunk's
    # "created" stays the same across the stream, as in vLLM (created_time, taken when the
    # request starts). Templates (and the role chunk below) are made before the first token
    # is due, not in the burst of first tokens that a wave of requests brings.
    plain = not chat.logprobs and not chat.continuous_usage

    def templated(build: Any) -> Any:
        text = json.dumps(build(_MARK), separators=(",", ":"))
        head, _, tail = text.partition(json.dumps(_MARK))
        head, tail = "data: " + head, tail + "\n\n"
        dumps = json.dumps

        def render(piece: str) -> bytes:
            return (head + dumps(piece) + tail).encode()

        return render

    if chat.kind == "text":
        renders = (
            [templated(lambda t, i=i: dialect.text_chunk(cid, chat, t, None, i)) for i in choices]
            if plain
            else []
        )
        await seq.wait_first(state.stop)
        # After an EOS the finish rides on a chunk of its own, text "", one decode step after
        # the last token (completion/serving.py streams the EOS token's output like any other).
        pieces = [*completion.deltas, ""] if completion.eos else completion.deltas
        for step, piece in enumerate(pieces):
            if step:
                await seq.wait_next(state.stop)
            last = step == len(pieces) - 1
            generated += chat.n if piece else 0
            if last:
                generated = completion.completion_tokens * chat.n
            seq.emitted()
            if plain and not last:
                for render in renders:
                    yield render(piece)
                continue
            for index in choices:
                chunk = dialect.text_chunk(
                    cid, chat, piece, completion.finish_reason if last else None, index
                )
                if last:
                    chunk["choices"][0]["stop_reason"] = completion.stop_reason
                if chat.logprobs:
                    chunk["choices"][0]["logprobs"] = text_logprobs([piece], chat.top_logprobs)
                yield sse(with_usage(chunk))
    else:
        first = dialect.first_delta()
        # vLLM sends the role chunk when the first token is out (chat_completion/serving.py,
        # first_iteration), right before that token's chunk: both go in one write here, so
        # a burst of first tokens costs one trip through the ASGI send path each, not two.
        head = b""
        if first is not None:
            head = b"".join(
                sse(with_usage(dialect.chunk(cid, chat, first, None, index))) for index in choices
            )

        def joined(data: bytes) -> bytes:
            nonlocal head
            if head:
                data, head = head + data, b""
            return data

        renders = (
            [
                templated(lambda t, i=i: dialect.chunk(cid, chat, {"content": t}, None, i))
                for i in choices
            ]
            if plain
            else []
        )
        await seq.wait_first(state.stop)

        def delta_of(step: int, delta: dict) -> dict:
            # Ollama (openai/openai.go ToStreamChunks, includeRole): the role only once.
            return {"role": "assistant", **delta} if first is None and step == 0 else delta

        merged = False
        if completion.tool_calls:
            for step, delta in enumerate(dialect.tool_call_deltas(completion.tool_calls)):
                if step:
                    await seq.wait_next(state.stop)
                generated = completion.completion_tokens * chat.n
                seq.emitted()
                for index in choices:
                    chunk = dialect.chunk(cid, chat, delta_of(step, delta), None, index)
                    yield joined(sse(with_usage(chunk)))
        else:
            # vLLM (chat_completion/serving.py chat_completion_stream_generator): the engine
            # output that hits max_tokens holds the last token's text and the finish_reason,
            # streamed as one chunk; no empty chunk follows. vLLM's benchmark client counts a
            # `content: ""` chunk without a role as a token (benchmarks/lib/
            # endpoint_request_func.py _choice_has_streamed_output), so an extra one added an
            # inter-token latency of ~0 to every `vllm bench serve --ignore-eos` request.
            merged = (
                dialect.finish_on_last_token
                and completion.finish_reason == "length"
                and bool(completion.deltas)
            )
            for step, piece in enumerate(completion.deltas):
                if step:
                    await seq.wait_next(state.stop)
                generated += chat.n if piece else 0
                seq.emitted()
                final = merged and step == len(completion.deltas) - 1
                if plain and (step or first is not None) and not final:
                    for render in renders:
                        yield joined(render(piece))
                    continue
                for index in choices:
                    delta = delta_of(step, {"content": piece})
                    finish = completion.finish_reason if final else None
                    chunk = dialect.chunk(cid, chat, delta, finish, index)
                    if final and "stop_reason" in chunk["choices"][0]:
                        chunk["choices"][0]["stop_reason"] = completion.stop_reason
                    if chat.logprobs:
                        chunk["choices"][0]["logprobs"] = {
                            "content": logprobs_content([piece], chat.top_logprobs)
                        }
                    yield joined(sse(with_usage(chunk)))
        if head:  # no token followed the role chunk: it goes out at once, as before
            yield joined(b"")
        await _eos_step(state, seq, completion)
        generated = completion.completion_tokens * chat.n
        if not merged:
            for index in choices:
                chunk = dialect.chunk(
                    cid, chat, dialect.last_delta(), completion.finish_reason, index
                )
                if "stop_reason" in chunk["choices"][0]:
                    chunk["choices"][0]["stop_reason"] = completion.stop_reason
                yield sse(with_usage(chunk))
    # The answer's timed part is out; what is left (usage, [DONE], the end of the body, the
    # keep-alive turnover) waits for a turn (EngineModel.turn, one per loop iteration, the
    # loop polls its sockets in between). Equal-length streams end together: done back to
    # back, 64 such tails held the loop for ~20 ms, the next requests that clients sent
    # meanwhile were read (their TTFT clock started) that much late, all at once, and their
    # first tokens then fell due together and left one after another (+2-5 % TTFT at 64
    # streams). Taking turns, each request is read as it comes and its first token is due
    # on its own. The sequence is finished first: the engine frees a request's KV blocks and
    # records its latencies when its last token is out (vLLM: the scheduler step that finishes
    # it, v1/core/sched/scheduler.py update_from_output -> _free_request), not when the server
    # has sent the tail; held through the turns, the blocks of 256 ending streams made running
    # ones preempt.
    seq.finish()
    await state.engine.turn()
    done = sse("[DONE]")
    if chat.include_usage:
        done = sse(dialect.usage_chunk(cid, chat, usage(chat, completion))) + done
    yield done  # one write with the end of the body (streaming.TokenStream)


def is_integral(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
