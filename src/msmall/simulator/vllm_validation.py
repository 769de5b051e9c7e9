"""vLLM 0.33's request validation as the simulator renders it: the pydantic-style type errors
of its request models and its VLLMValidationError, in vLLM's status/type/param/message shape.
Shared by the chat routes (vllm_app) and the other routes (vllm_extra)."""

from __future__ import annotations

from typing import Any

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


def _bad(exc: VLLMValidationError) -> ChatError:
    """serve/exception_handling/error_response.py create_error_response for a
    VLLMValidationError raised while serving: 400 BadRequestError, param = exc.parameter."""
    return ChatError(str(exc), 400, "BadRequestError", exc.parameter)
