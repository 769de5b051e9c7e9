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

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
# vllm/v1/engine/exceptions.py EngineDeadError.CLIENT_MESSAGE: what a client gets (HTTP 500,
# InternalServerError) once the engine died (serve/exception_handling/error_response.py).
ENGINE_DEAD_CLIENT = "The server had an error while processing your request."
# vllm/entrypoints/serve/utils/fingerprint.py build_system_fingerprint, mode "full", TP 1:
# "vllm-<version>-<8 hex of vllm_config.compute_hash()>".
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-5e2b0c1d"


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


# renderers/chat_utils/types.py ChatCompletionMessageParam: openai's six message TypedDicts,
# vLLM's CustomChatCompletionMessageParam and openai_harmony's Message, with their required
# fields in declaration order. A message with a (string) role always fits the custom one, so
# only an item that is not an object, or has no role, fails; then every member reports.
_MESSAGE_MEMBERS = (
    ("ChatCompletionDeveloperMessageParam", ("content", "role"), "any"),
    ("ChatCompletionSystemMessageParam", ("content", "role"), "any"),
    ("ChatCompletionUserMessageParam", ("content", "role"), "any"),
    ("ChatCompletionAssistantMessageParam", ("role",), "any"),
    ("ChatCompletionToolMessageParam", ("content", "role", "tool_call_id"), "any"),
    ("ChatCompletionFunctionMessageParam", ("content", "name", "role"), "str"),
    ("CustomChatCompletionMessageParam", ("role",), "any"),
    ("Message", ("author",), "list"),
)


def _message_errors(value: Any, loc: Loc) -> list[dict]:
    if not isinstance(value, dict):
        errors = [
            _error("dict_type", (*loc, member), "Input should be a valid dictionary", value)
            for member, _, _ in _MESSAGE_MEMBERS[:-1]
        ]
        return [*errors, _model_type(value, (*loc, "Message"), "Message")]
    content = value.get("content")
    if "role" in value or not (
        "content" not in value
        or isinstance(content, str)
        or (
            isinstance(content, list)
            and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
        )
    ):
        # Typed content errors differ per member (22 for `content: 3`): not modelled;
        # parse_request answers those.
        return []
    errors: list[dict] = []
    for member, required, content_kind in _MESSAGE_MEMBERS:
        at = (*loc, member)
        names = sorted({*required, "content"}) if member != "Message" else ["author", "content"]
        for name in names:
            if name == "content" and "content" in value:
                if content_kind == "str" and not isinstance(content, str):
                    errors += _str_errors(content, (*at, name))
                elif content_kind == "list" and not isinstance(content, list):
                    errors.append(
                        _error("list_type", (*at, name), "Input should be a valid list", content)
                    )
            elif name in required and name not in value:
                errors.append(missing_error((*at, name), value))
    return errors


_messages_check = _list_of(_message_errors)


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
        errors = type_errors(body, "chat" if chat_route else "text")
        if errors:
            raise validation_failure(errors, errors[0]["loc"])
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


def _bad(exc: VLLMValidationError) -> ChatError:
    """serve/exception_handling/error_response.py create_error_response for a
    VLLMValidationError raised while serving: 400 BadRequestError, param = exc.parameter."""
    return ChatError(str(exc), 400, "BadRequestError", exc.parameter)


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
