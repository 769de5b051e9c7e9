"""vLLM 0.33's request validation as the simulator renders it: the pydantic-style type errors
of its request models and its VLLMValidationError, in vLLM's status/type/param/message shape.
Shared by the chat routes (vllm_app) and the other routes (vllm_extra)."""

from __future__ import annotations

import re
from functools import cache
from itertools import pairwise
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from msmall.simulator.chat import ChatError


def vllm_error(
    message: str, status: int = 400, kind: str = "BadRequestError", param: str | None = None
) -> JSONResponse:
    """vLLM's ErrorResponse: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


class VLLMValidationError(ValueError):
    """vllm/exceptions.py VLLMValidationError: str() appends "(parameter=..., value=...)"; repr()
    is the bare message (it shows up in validation error texts)."""

    def __init__(self, message: str, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:
        base = super().__str__()
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        return f"{base} ({', '.join(extras)})" if extras else base


def validation_failure(errors: list[Any], param: str | None = None) -> ChatError:
    """What vLLM answers a RequestValidationError with
    (serve/exception_handling/handlers/validation.py validation_exception_handler): 400,
    type "Bad Request", message "N validation error(s):" and one line per error, each the str()
    of pydantic's error dict with ``loc`` joined by dots and a container ``input`` summarised
    (_format_error: at most 10 errors, each cut at 1000 characters)."""
    count = len(errors)
    label = "error" if count == 1 else "errors"
    lines = [str(e) if len(str(e)) <= 1000 else str(e)[:1000] + "...[truncated]" for e in errors]
    message = f"{count} validation {label}:\n" + "".join(f"  {line}\n" for line in lines[:10])
    if count > 10:
        message += f"  ...and {count - 10} more {label}\n"
    return ChatError(message.rstrip(), 400, "Bad Request", param)


def _summarise(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, str):
        return value[:200] + "...[truncated]" if len(value) > 200 else value
    return str(value)


def model_validator_failure(exc: VLLMValidationError, body: dict) -> ChatError:
    error = {
        "type": "value_error",
        "loc": "body",
        "msg": f"Value error, {exc}",
        "input": _summarise(body),
        "ctx": {"error": exc},
    }
    return validation_failure([error], exc.parameter)


def check_chat_body(body: dict[str, Any]) -> None:
    """ChatCompletionRequest's model validators (chat_completion/protocol.py), in the order
    pydantic runs "before" validators: the last defined runs first."""
    # check_tool_usage
    if "tools" in body and isinstance(body["tools"], list) and not body["tools"]:
        raise VLLMValidationError(
            "`tools` must not be an empty array. "
            "Either provide at least one tool or omit the field entirely.",
            parameter="tools",
        )
    choice = body.get("tool_choice")
    if choice is not None and choice != "none":
        if body.get("tools") is None:
            raise VLLMValidationError(
                "When using `tool_choice`, `tools` must be set.", parameter="tool_choice"
            )
        if choice not in ("auto", "required") and not isinstance(choice, dict):
            raise VLLMValidationError(
                f"Invalid value for `tool_choice`: {choice}! "
                'Only named tools, "none", "auto" or "required" are supported.',
                parameter="tool_choice",
            )
        usage = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
        if isinstance(choice, dict):
            function = choice.get("function")
            if not isinstance(function, dict):
                raise VLLMValidationError(
                    f"Invalid value for `function`: `{function}` in `tool_choice`! {usage}",
                    parameter="tool_choice.function",
                )
            if "name" not in function:
                raise VLLMValidationError(
                    f"Expected field `name` in `function` in `tool_choice`! {usage}",
                    parameter="tool_choice.function.name",
                )
            name = function["name"]
            if not isinstance(name, str) or not name:
                raise VLLMValidationError(
                    f"Invalid `name` in `function`: `{name}` in `tool_choice`! {usage}",
                    parameter="tool_choice.function.name",
                )
            names = [
                (t.get("function") or {}).get("name")
                for t in body.get("tools") or []
                if isinstance(t, dict)
            ]
            if name not in names:
                raise VLLMValidationError(
                    "The tool specified in `tool_choice` does not match any of the specified "
                    "`tools`",
                    parameter="tool_choice",
                )
    # check_logprobs
    for name in ("prompt_logprobs", "top_logprobs"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise VLLMValidationError(f"`{name}` must be an integer.", parameter=name, value=value)
    top = body.get("top_logprobs")
    if top is not None:
        if top < 0 and top != -1:
            raise VLLMValidationError(
                "`top_logprobs` must be a positive value or -1.",
                parameter="top_logprobs",
                value=top,
            )
        if (top > 0 or top == -1) and not body.get("logprobs"):
            raise VLLMValidationError(
                "when using `top_logprobs`, `logprobs` must be set to true.",
                parameter="top_logprobs",
            )
    # validate_stream_options
    if body.get("stream_options") and not body.get("stream"):
        raise VLLMValidationError(
            "Stream options can only be defined when `stream=True`.", parameter="stream_options"
        )
    # validate_response_format
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema" and rf.get("json_schema") is None:
        raise VLLMValidationError(
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            parameter="response_format",
        )


# Pydantic's lax-mode checks (pydantic-core errors/types.rs messages), field by field and in the
# order the request model declares its fields (pydantic reports errors in that order), down
# into the nested models clients get wrong: messages items, tools[].function,
# response_format.json_schema, stream_options. Each checker returns pydantic's error dicts with
# ``loc`` below "body"; validation_failure renders them as vLLM's handler does.
_FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "min_p")  # fmt: skip
_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "min_tokens", "top_k", "seed")
_BOOL_FIELDS = ("stream", "logprobs", "ignore_eos", "echo", "skip_special_tokens")
_BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}

Loc = tuple[Any, ...]


def _bool_fields(body: dict[str, Any]) -> tuple[str, ...]:
    # /v1/completions' logprobs is an int (completion/protocol.py), chat's a bool.
    return _BOOL_FIELDS if "messages" in body else tuple(f for f in _BOOL_FIELDS if f != "logprobs")


def _error(kind: str, loc: Loc, msg: str, value: Any, ctx: dict | None = None) -> dict[str, Any]:
    error = {
        "type": kind,
        "loc": ".".join(("body", *map(str, loc))),
        "msg": msg,
        "input": _summarise(value),
    }
    if ctx is not None:
        error["ctx"] = ctx
    return error


def _float_errors(value: Any, loc: Loc) -> list[dict]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return []
    if isinstance(value, str):
        try:
            float(value)
            return []
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            return [_error("float_parsing", loc, msg, value)]
    if isinstance(value, bool):
        return []
    return [_error("float_type", loc, "Input should be a valid number", value)]


def _int_errors(value: Any, loc: Loc) -> list[dict]:
    if isinstance(value, int) and not isinstance(value, bool):
        return []
    if isinstance(value, float):
        if value.is_integer():
            return []
        msg = "Input should be a valid integer, got a number with a fractional part"
        return [_error("int_from_float", loc, msg, value)]
    if isinstance(value, str):
        if value.strip().lstrip("-").isdigit():
            return []
        msg = "Input should be a valid integer, unable to parse string as an integer"
        return [_error("int_parsing", loc, msg, value)]
    if isinstance(value, bool):
        return []
    return [_error("int_type", loc, "Input should be a valid integer", value)]


def _bool_errors(value: Any, loc: Loc) -> list[dict]:
    if isinstance(value, bool):
        return []
    # Lax mode takes 0/1 (also 0.0/1.0) and the usual words.
    if (isinstance(value, (int, float)) and value in (0, 1)) or (
        isinstance(value, str) and value.lower() in _BOOL_WORDS
    ):
        return []
    if isinstance(value, (str, int, float)):
        msg = "Input should be a valid boolean, unable to interpret input"
        return [_error("bool_parsing", loc, msg, value)]
    return [_error("bool_type", loc, "Input should be a valid boolean", value)]


def _str_errors(value: Any, loc: Loc) -> list[dict]:
    if isinstance(value, str):
        return []
    return [_error("string_type", loc, "Input should be a valid string", value)]


def _dict_errors(value: Any, loc: Loc) -> list[dict]:
    if isinstance(value, dict):
        return []
    return [_error("dict_type", loc, "Input should be a valid dictionary", value)]


def _model_type(value: Any, loc: Loc, name: str) -> dict[str, Any]:
    msg = f"Input should be a valid dictionary or instance of {name}"
    return _error("model_type", loc, msg, value, {"class_name": name})


def _literal(value: Any, loc: Loc, allowed: tuple[str, ...]) -> list[dict]:
    if value in allowed:
        return []
    quoted = [repr(a) for a in allowed]
    expected = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return [
        _error("literal_error", loc, f"Input should be {expected}", value, {"expected": expected})
    ]


def _fields(
    obj: dict[str, Any], loc: Loc, spec: list[tuple[str, Any, bool]]
) -> list[dict[str, Any]]:
    """A model's fields in declaration order: (name, checker, required); None is accepted for
    an optional field (``X | None``)."""
    errors: list[dict[str, Any]] = []
    for name, check, required in spec:
        if name not in obj:
            if required:
                errors.append(missing_error((*loc, name), obj))
            continue
        if obj[name] is None and not required:
            continue
        errors += check(obj[name], (*loc, name))
    return errors


# chat_completion/protocol.py ChatCompletionToolsParam, generate/base/protocol.py
# FunctionDefinition.
def _function_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "FunctionDefinition")]
    return _fields(value, loc, [("name", _str_errors, True), ("description", _str_errors, False),
                                ("parameters", _dict_errors, False),
                                ("strict", _bool_errors, False)])  # fmt: skip


def _tool_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "ChatCompletionToolsParam")]
    literal = lambda v, at: _literal(v, at, ("function",))  # noqa: E731
    return _fields(value, loc, [("type", literal, False), ("function", _function_errors, True)])


def _list_of(item: Any) -> Any:
    def check(value: Any, loc: Loc) -> list[dict]:
        if not isinstance(value, list):
            return [_error("list_type", loc, "Input should be a valid list", value)]
        return [e for n, v in enumerate(value) for e in item(v, (*loc, n))]

    return check


# generate/base/protocol.py AnyResponseFormat = ResponseFormat | StructuralTagResponseFormat |
# LegacyStructuralTagResponseFormat: a union, so a value no member accepts gets every member's
# errors, in that order (their class names drop out of loc: OpenAIBaseModel's wrap validator
# is the tag, and clean_loc_for_param removes it).
_RESPONSE_FORMATS = ("ResponseFormat", "StructuralTagResponseFormat",
                     "LegacyStructuralTagResponseFormat")  # fmt: skip


def _json_schema_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "JsonSchemaResponseFormat")]
    # JsonSchemaResponseFormat: the schema field is aliased "schema".
    return _fields(value, loc, [("name", _str_errors, True), ("description", _str_errors, False),
                                ("schema", _dict_errors, False),
                                ("strict", _bool_errors, False)])  # fmt: skip


def _response_format_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, name) for name in _RESPONSE_FORMATS]
    formats = ("text", "json_object", "json_schema")
    plain = _fields(
        value,
        loc,
        [("type", lambda v, at: _literal(v, at, formats), True),
         ("json_schema", _json_schema_errors, False)],
    )  # fmt: skip
    if not plain:
        return []
    tag = lambda v, at: _literal(v, at, ("structural_tag",))  # noqa: E731
    accept = lambda v, at: []  # noqa: E731
    tagged = _fields(value, loc, [("type", tag, True), ("format", accept, True)])
    legacy = _fields(
        value, loc, [("type", tag, True), ("structures", accept, True), ("triggers", accept, True)]
    )
    if not tagged or not legacy:
        return []
    return plain + tagged + legacy


def _stream_options_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "StreamOptions")]
    return _fields(value, loc, [("include_usage", _bool_errors, False),
                                ("continuous_usage_stats", _bool_errors, False)])  # fmt: skip


# serve/exception_handling/handlers/validation.py _INTERNAL_LOC_MARKERS: pydantic-core's schema
# kinds, dropped from an error's loc along with bracketed segments (clean_loc_for_param). A real
# field called "arguments" (a tool call's) goes too, as it does in vLLM.
_INTERNAL_LOC_MARKERS = frozenset({
    "function-wrap", "function-after", "function-before", "function-plain", "json-or-python",
    "lax-or-strict", "chain", "default", "nullable", "tagged-union", "union", "call",
    "arguments", "is-instance", "is-subclass", "callable", "str", "int", "float", "bool",
    "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset", "complex", "none",
    "nonetype",
})  # fmt: skip
_BRACKETED = re.compile(r"[\[\]{}()]")


def clean_loc(loc: Loc) -> str:
    """validation.py clean_loc_for_param."""
    parts = [
        str(p)
        for p in loc
        if not (_BRACKETED.search(str(p)) or str(p).lower() in _INTERNAL_LOC_MARKERS)
    ]
    return ".".join(parts) if parts else ".".join(map(str, loc))


def _pydantic_errors(exc: ValidationError, prefix: Loc) -> list[dict[str, Any]]:
    """A pydantic ValidationError's errors as FastAPI hands them to validation.py (no url),
    with _format_error's cleaned loc and summarised input."""
    errors = []
    for err in exc.errors(include_url=False):
        err = dict(err)
        err["loc"] = clean_loc((*prefix, *err["loc"]))
        err["input"] = _summarise(err["input"])
        errors.append(err)
    return errors


_PLAIN_ROLES = ("system", "user", "assistant", "developer")


def _plain_part(part: Any) -> bool:
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return part.keys() == {"type", "text"} and isinstance(part["text"], str)
    if part.get("type") == "image_url" and part.keys() == {"type", "image_url"}:
        url = part["image_url"]
        return (
            isinstance(url, dict)
            and isinstance(url.get("url"), str)
            and url.keys() <= {"url", "detail"}
            and url.get("detail", "auto") in ("auto", "low", "high", "original")
        )
    return False


def _plain_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (
        isinstance(function, dict)
        and call.keys() == {"id", "type", "function"}
        and isinstance(call["id"], str)
        and call["type"] == "function"
        and function.keys() == {"name", "arguments"}
        and isinstance(function["name"], str)
        and isinstance(function["arguments"], str)
    )


def _plain_message(msg: Any) -> bool:
    """A message that certainly fits its own openai member, validates eagerly and renders
    (what clients send nearly always): no need to run pydantic over the union for it. Every
    other shape takes the full path below."""
    if not isinstance(msg, dict):
        return False
    role = msg.get("role")
    content = msg.get("content")
    keys = msg.keys()
    if "name" in msg and not isinstance(msg["name"], str):
        return False
    if role == "tool":
        return (
            keys <= {"role", "content", "tool_call_id", "name"}
            and isinstance(content, str)
            and isinstance(msg.get("tool_call_id"), str)
        )
    if role not in _PLAIN_ROLES:
        return False
    if role == "assistant":
        calls = msg.get("tool_calls")
        return (
            keys <= {"role", "content", "name", "tool_calls"}
            and (content is None or isinstance(content, str))
            and (calls is None or (isinstance(calls, list) and all(map(_plain_call, calls))))
        )
    if not keys <= {"role", "content", "name"}:
        return False
    if isinstance(content, str):
        return True
    # Only a user message's parts may be images (openai's text-only members for the rest).
    return role == "user" and isinstance(content, list) and all(map(_plain_part, content))


def all_plain(messages: Any) -> bool:
    """Whether every message is a _plain_message."""
    return isinstance(messages, list) and all(map(_plain_message, messages))


def _messages_check(value: Any, loc: Loc) -> list[dict]:
    """``messages: list[ChatCompletionMessageParam]`` validated by pydantic itself against the
    union copied in vllm_messages (22 errors for a user message with ``content: 5``)."""
    if all_plain(value):
        return []
    from msmall.simulator.vllm_messages import messages_adapter

    try:
        messages_adapter().validate_python(value)
    except ValidationError as exc:
        return _pydantic_errors(exc, ("body", *loc))
    return []


def normalize_messages(body: dict[str, Any]) -> None:
    """chat_completion/protocol.py ChatCompletionRequest._normalize_messages_before (a "before"
    validator that runs after the ones check_chat_body copies): a tool_calls that is not a list
    becomes ``list(tool_calls)`` (a dict becomes its keys), reasoning_content becomes
    reasoning. ``list()`` of a number raises TypeError, which pydantic does not catch: vLLM's
    fallback handler answers it (handlers/exception.py -> error_response.py
    create_error_response: 400 BadRequestError, no param)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        calls = msg.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            try:
                msg["tool_calls"] = list(calls)
            except TypeError as exc:
                raise ChatError(str(exc), 400, "BadRequestError", None) from None
        reasoning = msg.pop("reasoning_content", None)
        if reasoning is not None and msg.get("reasoning") is None:
            msg["reasoning"] = reasoning


def tool_call_errors(messages: Any) -> list[dict[str, Any]]:
    """chat_completion/protocol.py ChatCompletionRequest._materialize_tool_calls_after, run once
    the whole request validated: ChatCompletionAssistantMessageParam.tool_calls is an
    ``Iterable`` that pydantic checks lazily, so a malformed call fails only here, at
    ``list()``, with a loc relative to the iterator (``body.0.<member>.<field>``) and only
    the first bad call's errors."""
    if (
        not isinstance(messages, list)
        or not any(isinstance(m, dict) and m.get("tool_calls") is not None for m in messages)
        or all_plain(messages)
    ):
        return []
    from msmall.simulator.vllm_messages import messages_adapter

    for msg in messages_adapter().validate_python(messages):
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if calls is not None and not isinstance(calls, list):
            try:
                list(calls)
            except ValidationError as exc:
                return _pydantic_errors(exc, ("body",))
    return []


# renderers/chat_utils/chat_message.py MM_PARSER_MAP's keys and PART_TYPES_TO_SKIP_NONE_CONTENT,
# as parse_chat_message_content_part lists them for an unsupported part type.
_PART_TYPES = ("audio_embeds", "audio_url", "image_embeds", "image_pil", "image_url",
               "input_audio", "input_image", "input_text", "output_text", "prompt_embeds",
               "refusal", "text", "thinking", "tool_reference", "video_embeds", "video_url")  # fmt: skip
_DIRECT_PART_KEYS = ("image_url", "image_pil", "image_embeds", "audio_embeds", "video_embeds",
                     "prompt_embeds", "audio_url", "input_audio", "video_url", "tool_reference")  # fmt: skip


def sanitize_message(message: str) -> str:
    """serve/exception_handling/utils.py sanitize_message."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def _check_part(part: Any) -> None:
    """chat_message.py parse_chat_message_content_part / parse_chat_message_content_mm_part for
    one part of a list content, up to where the simulator stops modelling (media loading)."""
    if isinstance(part, str) or not isinstance(part, dict):
        return
    kind = part.get("type")
    if isinstance(kind, str) and kind in _PART_TYPES and part.get("uuid") is None:
        if kind == "image_url":
            from msmall.simulator.vllm_messages import image_part_adapter

            # _ImageParser: the part is validated again, eagerly, as openai's image part.
            image_part_adapter().validate_python(part)
        return
    if kind is None or part.get("uuid") is not None:
        if any(key in part for key in _DIRECT_PART_KEYS):
            return
        raise VLLMValidationError("Missing 'type' field in multimodal part.", parameter="type")
    if not isinstance(kind, str):
        raise VLLMValidationError("Invalid 'type' field in multimodal part.", parameter="type")
    raise VLLMValidationError(
        f"Unsupported chat content part type: {kind!r}. Supported types: {', '.join(_PART_TYPES)}.",
        parameter="type",
        value=kind,
    )


_TEXT_FIELDS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                "thinking": "thinking"}  # fmt: skip


def _as_sim_part(part: Any) -> Any:
    """One part that vLLM accepted, in the two kinds the shared chat code reads (text,
    image_url), following chat_message.py parse_chat_message_content_mm_part: a plain string
    is text, TEXT_PART_TYPES carry their text under MM_PARSER_MAP's key, input_image and a
    typeless part with image_url are images. Text parts without text are skipped
    (PART_TYPES_TO_SKIP_NONE_CONTENT). Other kinds are left for the chat code to refuse."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind in _TEXT_FIELDS:
        text = part.get(_TEXT_FIELDS[kind])
        return None if text is None else {"type": "text", "text": text}
    if kind == "input_image" or (kind is None and "image_url" in part):
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "image_url", "image_url": {"url": url}}
    return part


def to_sim_parts(messages: Any) -> None:
    """Rewrites list contents that passed check_rendering into the simulator's vocabulary."""
    if not isinstance(messages, list):
        return
    for msg in messages:
        if isinstance(msg, dict) and isinstance(msg.get("content"), list):
            parts = (_as_sim_part(p) for p in msg["content"])
            msg["content"] = [p for p in parts if p is not None]


def check_rendering(messages: Any) -> None:
    """What vLLM checks after validation, while rendering the prompt
    (renderers/mistral.py MistralRenderer.render_messages -> chat_message.py
    parse_chat_messages -> parse_chat_message_content): an ``Iterable`` content that pydantic
    accepted lazily is iterated here, so a bad part fails now, as a raw pydantic
    ValidationError ("N validation errors for ValidatorIterator" ...); then each part's type is
    checked. Both answer through error_response.py create_error_response: 400
    BadRequestError, param None for the ValidationError (a ValueError), ``type`` for
    VLLMValidationError. Raises the ChatError to answer, or returns."""
    if not isinstance(messages, list) or all_plain(messages):
        return
    from msmall.simulator.vllm_messages import messages_adapter

    try:
        for msg in messages_adapter().validate_python(messages):
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if content is None or isinstance(content, str):
                continue
            if msg.get("role") == "system":
                # _strip_claude_code_billing_header walks the whole list first.
                content = list(content)
            for part in content:
                _check_part(part)
    except ValidationError as exc:
        raise ChatError(sanitize_message(str(exc)), 400, "BadRequestError", None) from None
    except VLLMValidationError as exc:
        raise _bad(exc) from None


def _default_input_image_details(item: Any) -> Any:
    """responses/protocol.py _default_input_image_details, the items' BeforeValidator."""
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    parts = [
        {**p, "detail": "auto"}
        if isinstance(p, dict) and p.get("type") == "input_image" and "detail" not in p
        else p
        for p in item["content"]
    ]
    return {**item, "content": parts}


_CALL_STATUS = (None, "in_progress", "completed", "incomplete")


def _plain_item(item: Any) -> bool:
    """An input item that certainly fits a member of ResponseInputOutputItem (an easy
    message, or a function_call / function_call_output of the plain shape clients send), so
    the 61-member union need not run for it."""
    from msmall.simulator.vllm_messages import validate_easy_message

    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    if kind == "function_call":
        # ResponseFunctionToolCallParam: arguments, call_id, name are required strings.
        return (
            item.keys() <= {"type", "call_id", "name", "arguments", "id", "status"}
            and all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments"))
            and isinstance(item.get("id", ""), str)
            and item.get("status") in _CALL_STATUS
        )
    if kind == "function_call_output":
        # FunctionCallOutput: output is required, call_id and id are optional.
        return (
            item.keys() <= {"type", "call_id", "output", "id", "status"}
            and isinstance(item.get("output"), str)
            and all(isinstance(item.get(k), (str, type(None))) for k in ("call_id", "id"))
            and item.get("status") in _CALL_STATUS
        )
    if "role" not in item or kind not in (None, "message"):
        return False
    try:
        validate_easy_message(_default_input_image_details(item))
    except ValidationError:
        return False
    return True


def responses_input_errors(value: Any) -> list[dict[str, Any]]:
    """ResponsesRequest.input's pydantic errors (responses/protocol.py: ``str |
    list[Annotated[ResponseInputOutputItem, BeforeValidator(_default_input_image_details)]]``),
    from pydantic itself on the union generated from openai 3.57 (vllm_responses_items: 33
    ResponseInputItemParam TypedDicts, then 28 ResponseOutputItem models), so a bad item gets
    every member's errors (200-odd; validation.py shows 10 and the count)."""
    if isinstance(value, str) or (isinstance(value, list) and all(map(_plain_item, value))):
        return []
    try:
        _responses_input_adapter().validate_python(value)
    except ValidationError as exc:
        return _pydantic_errors(exc, ("body", "input"))
    return []


@cache
def _responses_input_adapter() -> Any:
    # Built on first use: importing the 330 generated types and building the union takes
    # about half a second (once per process).
    from typing import Annotated

    from pydantic import BeforeValidator, ConfigDict, TypeAdapter

    from msmall.simulator.vllm_responses_items import ResponseInputOutputItem

    item = Annotated[ResponseInputOutputItem, BeforeValidator(_default_input_image_details)]
    # ResponsesRequest is an OpenAIBaseModel: its extra="allow" reaches the TypedDicts.
    return TypeAdapter(str | list[item], config=ConfigDict(extra="allow"))


_MISTRAL_ROLES = ("system", "user", "assistant", "tool", "developer")
# mistral_common/protocol/instruct/validator.py _validate_message_order: who may follow whom.
_NEXT_ROLES = {
    "system": ("user", "assistant", "system"),
    "user": ("assistant", "system", "user"),
    "assistant": ("assistant", "user", "tool"),
    "tool": ("assistant", "tool", "user"),
}
_TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")


def _template_error(message: str) -> ChatError:
    # renderers/mistral.py safe_apply_chat_template turns every exception into a ValueError,
    # which error_response.py create_error_response answers 400 BadRequestError, no param.
    return ChatError(message, 400, "BadRequestError", None)


def check_template(body: dict[str, Any]) -> None:
    """What applying the Mistral chat template refuses, after chat_message.py (renderers/
    mistral.py MistralRenderer.render_messages -> tokenizers/mistral.py apply_chat_template
    -> transformers' MistralCommonBackend -> mistral_common's validator, ValidationMode.test).
    Only the checks whose texts were taken from running that code (with mistral_common's own
    tekken file set to version v7, Mistral Small 3.1's): in order,
    tokenizers/mistral.py _validate_apply_chat_template_args, the openai -> mistral_common
    conversion (unknown role, tool message without tool_call_id: a KeyError's text),
    validator.py _validate_message_list_structure (single message, last role, role order),
    the 9-character tool call ids, and an empty assistant message."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    if not messages:
        raise _template_error("list index out of range")  # messages[-1] of an empty list
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if body.get("add_generation_prompt", True) and last.get("role") == "assistant":
        raise _template_error(
            "Cannot set `add_generation_prompt` to True when the last message is from the "
            "assistant. Consider using `continue_final_message` instead."
        )
    continuing = bool(body.get("continue_final_message", False))
    if continuing and last.get("role") != "assistant":
        raise _template_error(
            "Cannot set `continue_final_message` to True when the last message is not from "
            "the assistant."
        )
    dicts = [m for m in messages if isinstance(m, dict)]
    for msg in dicts:
        role = msg.get("role")
        if role not in _MISTRAL_ROLES:
            raise _template_error(f"Unknown message role: {role}")
        if role == "tool" and "tool_call_id" not in msg:
            raise _template_error("'tool_call_id'")
    roles = ["system" if m["role"] == "developer" else m["role"] for m in dicts]
    if len(roles) == 1 and roles[0] not in ("user", "system"):
        raise _template_error("Conversation must start with a user message or system message")
    if (
        len(roles) > 1
        and roles[-1] not in ("user", "tool")
        and not (roles[-1] == "assistant" and continuing)
    ):
        raise _template_error(
            "Expected last role User or Tool (or Assistant with prefix) for serving but got "
            f"{roles[-1]}"
        )
    for previous, current in pairwise(roles):
        if current not in _NEXT_ROLES[previous]:
            raise _template_error(f"Unexpected role '{current}' after role '{previous}'")
    for msg in dicts:
        ids = [
            call.get("id")
            for call in msg.get("tool_calls") or []
            if isinstance(call, dict) and msg["role"] == "assistant"
        ]
        if msg["role"] == "tool":
            ids.append(msg.get("tool_call_id"))
        for call_id in ids:
            if not isinstance(call_id, str) or not _TOOL_CALL_ID.match(call_id):
                raise _template_error(
                    f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."
                )
    for msg in dicts[:-1]:
        if msg["role"] == "assistant" and msg.get("content") == "" and not msg.get("tool_calls"):
            raise _template_error(
                "Invalid assistant message: role='assistant' content='' tool_calls=None "
                "prefix=False"
            )


# chat_completion/protocol.py ChatCompletionRequest and completion/protocol.py
# CompletionRequest: the checked fields in declaration order, (name, checker, required).
# min_tokens, ignore_eos and echo are not Optional: null is a type error too.
_CHAT_SPEC = [
    ("messages", _messages_check, True),
    ("model", _str_errors, False),
    ("frequency_penalty", _float_errors, False),
    ("logprobs", _bool_errors, False),
    ("max_tokens", _int_errors, False),
    ("max_completion_tokens", _int_errors, False),
    ("n", _int_errors, False),
    ("presence_penalty", _float_errors, False),
    ("response_format", _response_format_errors, False),
    ("seed", _int_errors, False),
    ("stream", _bool_errors, False),
    ("stream_options", _stream_options_errors, False),
    ("temperature", _float_errors, False),
    ("top_p", _float_errors, False),
    ("tools", _list_of(_tool_errors), False),
    ("top_k", _int_errors, False),
    ("min_p", _float_errors, False),
    ("repetition_penalty", _float_errors, False),
    ("ignore_eos", _bool_errors, "nonnull"),
    ("min_tokens", _int_errors, "nonnull"),
    ("skip_special_tokens", _bool_errors, False),
    ("echo", _bool_errors, "nonnull"),
]
_COMPLETION_SPEC = [
    ("model", _str_errors, False),
    ("echo", _bool_errors, False),
    ("frequency_penalty", _float_errors, False),
    ("logprobs", _int_errors, False),
    ("max_tokens", _int_errors, False),
    ("n", _int_errors, "nonnull"),
    ("presence_penalty", _float_errors, False),
    ("seed", _int_errors, False),
    ("stream", _bool_errors, False),
    ("stream_options", _stream_options_errors, False),
    ("temperature", _float_errors, False),
    ("top_p", _float_errors, False),
    ("top_k", _int_errors, False),
    ("min_p", _float_errors, False),
    ("repetition_penalty", _float_errors, False),
    ("ignore_eos", _bool_errors, "nonnull"),
    ("min_tokens", _int_errors, "nonnull"),
    ("skip_special_tokens", _bool_errors, False),
    ("response_format", _response_format_errors, False),
]


# anthropic/protocol.py AnthropicMessagesRequest and the models it nests.
_BLOCK_TYPES = ("text", "image", "tool_use", "tool_result", "tool_reference", "thinking",
                "redacted_thinking", "tool_addition", "tool_removal")  # fmt: skip


def _anthropic_block_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "AnthropicContentBlock")]
    kind = lambda v, at: _literal(v, at, _BLOCK_TYPES)  # noqa: E731
    return _fields(value, loc, [("type", kind, True), ("text", _str_errors, False),
                                ("source", _dict_errors, False), ("id", _str_errors, False),
                                ("tool_use_id", _str_errors, False),
                                ("name", _str_errors, False), ("input", _dict_errors, False)])  # fmt: skip


def _anthropic_content_errors(value: Any, loc: Loc) -> list[dict]:
    # str | list[AnthropicContentBlock]: a union, so both branches report (loc markers "str"
    # and "list[...]" are cleaned away).
    if isinstance(value, str):
        return []
    if not isinstance(value, list):
        return [
            *_str_errors(value, loc),
            _error("list_type", loc, "Input should be a valid list", value),
        ]
    blocks = _list_of(_anthropic_block_errors)(value, loc)
    return [*_str_errors(value, loc), *blocks] if blocks else []


def _anthropic_message_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "AnthropicMessage")]
    role = lambda v, at: _literal(v, at, ("user", "assistant", "system"))  # noqa: E731
    return _fields(value, loc, [("role", role, True), ("content", _anthropic_content_errors, True)])


def _anthropic_tool_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "AnthropicTool")]
    return _fields(value, loc, [("name", _str_errors, True), ("description", _str_errors, False),
                                ("input_schema", _dict_errors, True)])  # fmt: skip


def _anthropic_choice_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        return [_model_type(value, loc, "AnthropicToolChoice")]
    kind = lambda v, at: _literal(v, at, ("auto", "any", "tool", "none"))  # noqa: E731
    return _fields(value, loc, [("type", kind, True), ("name", _str_errors, False)])


_ANTHROPIC_SPEC = [
    ("model", _str_errors, True),
    ("messages", _list_of(_anthropic_message_errors), True),
    ("max_tokens", _int_errors, True),
    ("metadata", _dict_errors, False),
    ("stop_sequences", _list_of(_str_errors), False),
    ("stream", _bool_errors, False),
    ("temperature", _float_errors, False),
    ("tool_choice", _anthropic_choice_errors, False),
    ("tools", _list_of(_anthropic_tool_errors), False),
    ("top_k", _int_errors, False),
    ("top_p", _float_errors, False),
]

# name -> (position, checker, required), for a walk over the keys a body has (a handful) that
# still reports in declaration order.
_SPECS = {
    kind: {name: (pos, check, required) for pos, (name, check, required) in enumerate(spec)}
    for kind, spec in (
        ("chat", _CHAT_SPEC),
        ("text", _COMPLETION_SPEC),
        ("anthropic", _ANTHROPIC_SPEC),
    )
}
_REQUIRED = {
    kind: [(pos, name) for name, (pos, _, required) in spec.items() if required is True]
    for kind, spec in _SPECS.items()
}


def type_errors(body: dict[str, Any], kind: str = "chat") -> list[dict[str, Any]]:
    spec = _SPECS[kind]
    found: list[tuple[int, list[dict[str, Any]]]] = []
    for name, value in body.items():
        entry = spec.get(name)
        if entry is None:
            continue
        pos, check, required = entry
        if value is None:
            if not required:
                continue
            errors = (
                check(value, (name,))
                if required == "nonnull"
                else [_error("list_type", (name,), "Input should be a valid list", value)]
            )
        else:
            errors = check(value, (name,))
        if errors:
            found.append((pos, errors))
    for pos, name in _REQUIRED[kind]:
        if name not in body:
            found.append((pos, [missing_error((name,), body)]))
    found.sort(key=lambda item: item[0])
    return [error for _, errors in found for error in errors]


def _type_error(kind: str, name: str, msg: str, value: Any) -> dict[str, Any]:
    return _error(kind, (name,), msg, value)


def missing_error(loc: tuple[Any, ...], parent: Any) -> dict[str, Any]:
    """Pydantic's "Field required" for ``loc`` (below ``body``); its input is the object the
    field is missing from."""
    return {
        "type": "missing",
        "loc": ".".join(("body", *map(str, loc))),
        "msg": "Field required",
        "input": _summarise(parent),
    }


def _bad(exc: VLLMValidationError) -> ChatError:
    """serve/exception_handling/error_response.py create_error_response for a
    VLLMValidationError raised while serving: 400 BadRequestError, param = exc.parameter."""
    return ChatError(str(exc), 400, "BadRequestError", exc.parameter)
