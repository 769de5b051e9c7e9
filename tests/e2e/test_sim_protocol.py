"""Wire shapes and status codes the simulator copies from vLLM 0.33 and Ollama, each pinned to
the engine source it follows (paths inside the vllm 0.33.0 wheel and github.com/ollama/ollama).

The simulators run on a background thread of this process (SimulatorThread, port 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from helpers import http_get
from msmall.httpclient import new_client
from msmall.simulator import SimulatorConfig, SimulatorThread

MODEL = "mistral-small-3.1"
TAG = "mistral-small3.1:24b-instruct-2503-q4_K_M"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def vllm() -> Iterator[httpx.Client]:
    config = SimulatorConfig(port=0, quiet=True, max_model_len=1000)
    with (
        SimulatorThread(config) as sim,
        new_client(sim.base_url, timeout=10) as http,
    ):
        yield http


@pytest.fixture(scope="module")
def ollama() -> Iterator[httpx.Client]:
    config = SimulatorConfig(flavor="ollama", port=0, quiet=True, pulled=True)
    with (
        SimulatorThread(config) as sim,
        new_client(sim.base_url, timeout=10) as http,
    ):
        yield http


def chat(**extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def value_error(message: str, param: str | None, body: dict) -> dict:
    """serve/exception_handling/handlers/validation.py validation_exception_handler for a
    VLLMValidationError raised in a ChatCompletionRequest model validator."""
    suffix = f" (parameter={param})" if param else ""
    error = (
        f"{{'type': 'value_error', 'loc': 'body', 'msg': {('Value error, ' + message + suffix)!r}, "
        f"'input': '<dict of {len(body)} items>', 'ctx': {{'error': VLLMValidationError({message!r})}}}}"
    )
    return {
        "error": {
            "message": f"1 validation error:\n  {error}",
            "type": "Bad Request",
            "param": param,
            "code": 400,
        }
    }


# vLLM: request validation ----------------------------------------------------------------------


def test_non_json_content_type_is_refused(vllm: httpx.Client) -> None:
    # serve/utils/api_utils.py validate_json_request (a dependency of the POST routes).
    reply = vllm.post(
        "/v1/chat/completions",
        content=json.dumps(chat()),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "message": "1 validation error:\n  Unsupported Media Type: Only 'application/json' "
            "is allowed",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    }


def test_wrong_json_types_get_pydantic_errors(vllm: httpx.Client) -> None:
    reply = vllm.post("/v1/chat/completions", json=chat(temperature="hot", n=1.5))
    assert reply.status_code == 400
    error = reply.json()["error"]
    # Pydantic reports errors in the model's field order: n is declared before temperature.
    assert error["type"] == "Bad Request" and error["param"] == "body.n"
    assert error["message"] == (
        "2 validation errors:\n"
        "  {'type': 'int_from_float', 'loc': 'body.n', 'msg': 'Input should be a valid integer, "
        "got a number with a fractional part', 'input': '1.5'}\n"
        "  {'type': 'float_parsing', 'loc': 'body.temperature', 'msg': 'Input should be a valid "
        "number, unable to parse string as a number', 'input': 'hot'}"
    )
    # Lax mode: numeric strings are numbers.
    assert vllm.post("/v1/chat/completions", json=chat(temperature="0.5")).status_code == 200


# Expected texts: pydantic 2 validating vLLM 0.33's own request models (chat_completion/
# protocol.py ChatCompletionRequest, generate/base/protocol.py FunctionDefinition, ResponseFormat
# and its union, renderers/chat_utils/types.py ChatCompletionMessageParam over openai's message
# TypedDicts and openai_harmony's Message), rendered as serve/exception_handling/handlers/
# validation.py validation_exception_handler does: at most 10 errors, "...and N more errors".
@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        pytest.param(
            {"messages": ["hi"]},
            "body.messages.0.ChatCompletionDeveloperMessageParam",
            (
                "8 validation errors:\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionDeveloperMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionSystemMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionUserMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionAssistantMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionToolMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.ChatCompletionFunctionMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'dict_type', 'loc': 'body.messages.0.CustomChatCompletionMessageParam', 'msg': 'Input should be a valid dictionary', 'input': 'hi'}\n"
                "  {'type': 'model_type', 'loc': 'body.messages.0.Message', 'msg': 'Input should be a valid dictionary or instance of Message', 'input': 'hi', 'ctx': {'class_name': 'Message'}}"
            ),
            id="messages_item_not_an_object",
        ),
        pytest.param(
            {"messages": [{"content": "hi"}]},
            "body.messages.0.ChatCompletionDeveloperMessageParam.role",
            (
                "11 validation errors:\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionDeveloperMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionSystemMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionUserMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionAssistantMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionToolMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionToolMessageParam.tool_call_id', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionFunctionMessageParam.name', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.ChatCompletionFunctionMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.CustomChatCompletionMessageParam.role', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.messages.0.Message.author', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  ...and 1 more errors"
            ),
            id="message_without_role",
        ),
        pytest.param(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"description": "x"}}],
            },
            "body.tools.0.function.name",
            (
                "1 validation error:\n"
                "  {'type': 'missing', 'loc': 'body.tools.0.function.name', 'msg': 'Field required', 'input': '<dict of 1 items>'}"
            ),
            id="tool_function_name_missing",
        ),
        pytest.param(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "fn", "function": {"name": 3, "parameters": "p"}}],
            },
            "body.tools.0.type",
            (
                "3 validation errors:\n"
                "  {'type': 'literal_error', 'loc': 'body.tools.0.type', 'msg': \"Input should be 'function'\", 'input': 'fn', 'ctx': {'expected': \"'function'\"}}\n"
                "  {'type': 'string_type', 'loc': 'body.tools.0.function.name', 'msg': 'Input should be a valid string', 'input': '3'}\n"
                "  {'type': 'dict_type', 'loc': 'body.tools.0.function.parameters', 'msg': 'Input should be a valid dictionary', 'input': 'p'}"
            ),
            id="tool_fields_wrong_types",
        ),
        pytest.param(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
            },
            "body.response_format.json_schema.name",
            (
                "6 validation errors:\n"
                "  {'type': 'missing', 'loc': 'body.response_format.json_schema.name', 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
                "  {'type': 'literal_error', 'loc': 'body.response_format.type', 'msg': \"Input should be 'structural_tag'\", 'input': 'json_schema', 'ctx': {'expected': \"'structural_tag'\"}}\n"
                "  {'type': 'missing', 'loc': 'body.response_format.format', 'msg': 'Field required', 'input': '<dict of 2 items>'}\n"
                "  {'type': 'literal_error', 'loc': 'body.response_format.type', 'msg': \"Input should be 'structural_tag'\", 'input': 'json_schema', 'ctx': {'expected': \"'structural_tag'\"}}\n"
                "  {'type': 'missing', 'loc': 'body.response_format.structures', 'msg': 'Field required', 'input': '<dict of 2 items>'}\n"
                "  {'type': 'missing', 'loc': 'body.response_format.triggers', 'msg': 'Field required', 'input': '<dict of 2 items>'}"
            ),
            id="json_schema_name_missing",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "hi"}], "response_format": "json"},
            "body.response_format",
            (
                "3 validation errors:\n"
                "  {'type': 'model_type', 'loc': 'body.response_format', 'msg': 'Input should be a valid dictionary or instance of ResponseFormat', 'input': 'json', 'ctx': {'class_name': 'ResponseFormat'}}\n"
                "  {'type': 'model_type', 'loc': 'body.response_format', 'msg': 'Input should be a valid dictionary or instance of StructuralTagResponseFormat', 'input': 'json', 'ctx': {'class_name': 'StructuralTagResponseFormat'}}\n"
                "  {'type': 'model_type', 'loc': 'body.response_format', 'msg': 'Input should be a valid dictionary or instance of LegacyStructuralTagResponseFormat', 'input': 'json', 'ctx': {'class_name': 'LegacyStructuralTagResponseFormat'}}"
            ),
            id="response_format_not_an_object",
        ),
        pytest.param(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": "maybe"},
            },
            "body.stream_options.include_usage",
            (
                "1 validation error:\n"
                "  {'type': 'bool_parsing', 'loc': 'body.stream_options.include_usage', 'msg': 'Input should be a valid boolean, unable to interpret input', 'input': 'maybe'}"
            ),
            id="stream_options_field",
        ),
    ],
)
def test_nested_type_errors_like_pydantic(
    vllm: httpx.Client, extra: dict, param: str, message: str
) -> None:
    reply = vllm.post("/v1/chat/completions", json={"model": MODEL, **extra})
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": message,
        "type": "Bad Request",
        "param": param,
        "code": 400,
    }


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        # chat_completion/protocol.py check_tool_usage
        (
            {"tools": []},
            "`tools` must not be an empty array. Either provide at least one tool or omit the "
            "field entirely.",
            "tools",
        ),
        (
            {"tool_choice": "auto"},
            "When using `tool_choice`, `tools` must be set.",
            "tool_choice",
        ),
        (
            {"tools": [TOOL], "tool_choice": "sometimes"},
            'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or '
            '"required" are supported.',
            "tool_choice",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
            "tool_choice",
        ),
        # check_logprobs
        (
            {"top_logprobs": 2},
            "when using `top_logprobs`, `logprobs` must be set to true.",
            "top_logprobs",
        ),
        # validate_stream_options
        (
            {"stream_options": {"include_usage": True}},
            "Stream options can only be defined when `stream=True`.",
            "stream_options",
        ),
        # validate_response_format
        (
            {"response_format": {"type": "json_schema"}},
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            "response_format",
        ),
    ],
)
def test_model_validators(vllm: httpx.Client, extra: dict, message: str, param: str) -> None:
    body = chat(**extra)
    reply = vllm.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json() == value_error(message, param, body)


def test_sampling_params_errors(vllm: httpx.Client) -> None:
    # vllm/sampling_params.py _verify_num_sequences / _verify_args, through
    # serve/exception_handling/error_response.py create_error_response (BadRequestError).
    zero_n = vllm.post("/v1/chat/completions", json=chat(n=0)).json()["error"]
    assert zero_n == {
        "message": "n must be at least 1, got 0.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    zero_max = vllm.post("/v1/chat/completions", json=chat(max_tokens=0)).json()["error"]
    assert zero_max["message"] == (
        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
    )
    assert zero_max["param"] == "max_tokens"
    min_over = vllm.post("/v1/chat/completions", json=chat(max_tokens=2, min_tokens=5))
    assert min_over.json()["error"]["message"] == (
        "min_tokens must be less than or equal to max_tokens=2, got 5."
    )
    empty_stop = vllm.post("/v1/chat/completions", json=chat(stop=[""]))
    assert empty_stop.json()["error"]["message"] == "stop cannot contain an empty string."


def test_lengths_clamp_or_refuse_like_033(vllm: httpx.Client) -> None:
    # max_model_len is 1000 here. serve/utils/api_utils.py get_max_tokens clamps a max_tokens
    # that fits the context alone but not with the prompt...
    prompt = "word " * 600
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 900,
        "ignore_eos": True,
    }
    clamped = vllm.post("/v1/chat/completions", json=body)
    assert clamped.status_code == 200
    usage = clamped.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 1000
    assert clamped.json()["choices"][0]["finish_reason"] == "length"
    # ... renderers/params.py refuses one larger than the whole context ...
    over = vllm.post("/v1/chat/completions", json=chat(max_completion_tokens=1001)).json()
    assert over["error"] == {
        "message": "max_completion_tokens=1001 cannot be greater than max_model_len=1000. "
        "Please request fewer output tokens. (parameter=max_completion_tokens, value=1001)",
        "type": "BadRequestError",
        "param": "max_completion_tokens",
        "code": 400,
    }
    # ... and a prompt longer than the context (renderers/params.py _token_len_check).
    huge = vllm.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "word " * 1200}]},
    ).json()["error"]
    assert huge["param"] == "input_tokens"
    assert huge["message"].startswith(
        "This model's maximum context length is 1000 tokens. However, your prompt contains "
    )
    assert "which exceeds this limit even without any output tokens." in huge["message"]


# vLLM: response shapes -------------------------------------------------------------------------


def test_message_shape(vllm: httpx.Client) -> None:
    body = vllm.post("/v1/chat/completions", json=chat()).json()
    message = body["choices"][0]["message"]
    # chat_completion/protocol.py ChatMessage: no tool_calls key when empty, `reasoning`
    # (not reasoning_content).
    assert "tool_calls" not in message and "reasoning_content" not in message
    assert message["reasoning"] is None
    assert body["choices"][0]["stop_reason"] is None
    # serve/utils/fingerprint.py build_system_fingerprint, mode "full".
    assert body["system_fingerprint"].startswith("vllm-0.33.0-")
    forced = vllm.post(
        "/v1/chat/completions",
        json=chat(
            tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}
        ),
    ).json()["choices"][0]
    # message_assembly.py: forced calls get content ""; tool_calls_utils.py: named -> "stop".
    assert forced["message"]["content"] == "" and forced["finish_reason"] == "stop"
    auto = vllm.post("/v1/chat/completions", json=chat(tools=[TOOL])).json()["choices"][0]
    assert auto["message"]["content"] is None and auto["finish_reason"] == "tool_calls"


def test_stream_deltas(vllm: httpx.Client) -> None:
    body = chat(tools=[TOOL], stream=True)
    with vllm.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = [json.loads(e[6:]) for e in reply.iter_lines() if e.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    # serving.py: the role chunk first (content ""), then vllm/parser/mistral.py's (pre-v11)
    # name delta (id, type, name), argument pieces (each with type), then the finish chunk.
    assert deltas[0] == {"role": "assistant", "content": ""}
    head = deltas[1]["tool_calls"][0]
    assert set(head) == {"index", "id", "type", "function"} and head["function"] == {
        "name": "get_weather"
    }
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1]]
    assert all(d["tool_calls"][0]["type"] == "function" for d in deltas[1:-1])
    assert json.loads("".join(pieces)) == {"city": "Paris"}  # the default for a city
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["system_fingerprint"].startswith("vllm-0.33.0-")


def test_completions_route(vllm: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Say 'yes'", "max_tokens": 5, "logprobs": 1}
    reply = vllm.post("/v1/completions", json=body).json()
    # completion/protocol.py CompletionResponse / CompletionLogProbs.
    assert reply["object"] == "text_completion" and reply["id"].startswith("cmpl-")
    choice = reply["choices"][0]
    assert choice["text"] == "yes" and choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"] == ["yes"] and len(choice["logprobs"]["top_logprobs"]) == 1


def test_bearer_scheme_is_case_insensitive() -> None:
    # serve/middleware/authenticate.py verify_token: scheme.lower() != "bearer".
    config = SimulatorConfig(port=0, quiet=True, api_key="sk-x")
    with SimulatorThread(config) as sim, new_client(sim.base_url) as h:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert (
                h.get("/v1/models", headers={"Authorization": f"{scheme} sk-x"}).status_code == 200
            )
        assert h.get("/v1/models", headers={"Authorization": "Bearer sk-y"}).status_code == 401
        assert h.get("/v1/models", headers={"Authorization": "Basic sk-x"}).status_code == 401
        assert h.get("/health").status_code == 200


def test_metrics_report_the_load(vllm: httpx.Client) -> None:
    text = vllm.get("/metrics").text
    # vllm/v1/metrics/loggers.py PrometheusStatLogger: 0.33's names.
    assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert "vllm:gpu_cache_usage_perc" not in text


# Ollama ----------------------------------------------------------------------------------------


def test_ollama_wrong_method_is_405(ollama: httpx.Client) -> None:
    # server/routes.go: r.HandleMethodNotAllowed = true; gin's default body.
    reply = ollama.get("/api/chat")
    assert reply.status_code == 405 and reply.text == "405 method not allowed"
    missing = ollama.get("/api/nothing")
    assert missing.status_code == 404 and missing.text == "404 page not found"


def test_ollama_openai_shapes(ollama: httpx.Client) -> None:
    body = {"model": TAG, "messages": [{"role": "user", "content": "Say 'a b'"}], "stream": True}
    with ollama.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = [json.loads(e[6:]) for e in reply.iter_lines() if e.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    # openai/openai.go ToStreamChunks (role only in the first) and FinishChunk (delta {}).
    assert deltas == [{"role": "assistant", "content": "a"}, {"content": " b"}, {}]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    model = ollama.get(f"/v1/models/{TAG}").json()
    assert model == {
        "id": TAG,
        "object": "model",
        "created": model["created"],
        "owned_by": "library",
    }
    assert ollama.get("/v1/models/nope:latest").status_code == 404


def test_ollama_native_final_message_has_counts(ollama: httpx.Client) -> None:
    body = {"model": TAG, "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]}
    with ollama.stream("POST", "/api/chat", json=body) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    # server/routes.go ChatHandler: the call on its own line (content ""), then done with
    # api.Metrics.
    assert lines[0]["message"]["tool_calls"][0]["function"]["index"] == 0
    assert lines[0]["message"]["content"] == "" and not lines[0]["done"]
    final = lines[-1]
    assert final["done"] and final["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert final[key] > 0, key


def test_tokenize_detokenize_round_trip(vllm: httpx.Client) -> None:
    # serve/tokenize/protocol.py TokenizeResponse / DetokenizeResponse.
    tokens = vllm.post("/tokenize", json={"model": MODEL, "prompt": "hello simulated world"})
    body = tokens.json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == len(body["tokens"]) == 4 and body["max_model_len"] == 1000
    back = vllm.post("/detokenize", json={"model": MODEL, "tokens": body["tokens"]}).json()
    assert back == {"prompt": "hello simulated world"}
    plain = vllm.post("/tokenize", content=b"prompt=hi")
    assert plain.status_code == 400 and plain.json()["error"]["type"] == "Bad Request"


def test_responses_messages_openapi_docs(vllm: httpx.Client) -> None:
    resp = vllm.post("/v1/responses", json={"model": MODEL, "input": "Say 'r'"}).json()
    assert resp["object"] == "response" and resp["status"] == "completed"
    assert resp["output"][0]["content"][0] == {
        "annotations": [],
        "text": "r",
        "type": "output_text",
        "logprobs": None,
    }
    message = vllm.post(
        "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "Long story"}],
        },
    ).json()
    assert message["type"] == "message" and message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 3
    # The simulator's startup log announces /openapi.json and /docs (FastAPI's): both answer.
    paths = vllm.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/tokenize"} <= set(paths)
    assert "swagger-ui" in vllm.get("/docs").text


def test_request_ids(vllm: httpx.Client) -> None:
    # serve/engine/serving.py _base_request_id: X-Request-Id, else the body's request_id.
    by_header = vllm.post("/v1/chat/completions", json=chat(), headers={"X-Request-Id": "abc"})
    assert by_header.json()["id"] == "chatcmpl-abc"
    assert "x-request-id" not in by_header.headers  # only with --enable-request-id-headers
    by_body = vllm.post("/v1/completions", json={"model": MODEL, "prompt": "x", "request_id": "r1"})
    assert by_body.json()["id"] == "cmpl-r1"
    config = SimulatorConfig(port=0, quiet=True, request_id_headers=True)
    with SimulatorThread(config) as sim, new_client(sim.base_url) as h:
        assert h.get("/health", headers={"X-Request-Id": "mine"}).headers["x-request-id"] == "mine"
        assert len(h.get("/health").headers["x-request-id"]) == 32


def test_fractional_tools_as_text() -> None:
    # For issue 13's bench: "tools-as-text:0.3" answers 30% of tool-call requests with the
    # raw "[TOOL_CALLS][...]" text (vLLM without --tool-call-parser), exactly 3 in every 10.
    config = SimulatorConfig(port=0, quiet=True, fail=frozenset({"tools-as-text:0.3"}))
    with SimulatorThread(config) as sim, new_client(sim.base_url) as h:
        replies = [
            h.post("/v1/chat/completions", json=chat(tools=[TOOL])).json() for _ in range(10)
        ]
        plain = h.post("/v1/chat/completions", json=chat()).json()
    as_text = [r for r in replies if "tool_calls" not in r["choices"][0]["message"]]
    assert len(as_text) == 3
    assert all(r["choices"][0]["message"]["content"].startswith("[TOOL_CALLS][") for r in as_text)
    assert plain["choices"][0]["message"]["content"]  # requests without tools are unaffected


def test_messages_stream_events(vllm: httpx.Client) -> None:
    # entrypoints/anthropic/serving.py message_stream_converter's event sequence.
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "Say 'a b'"}],
    }
    with vllm.stream("POST", "/v1/messages", json=body) as reply:
        names = [line[7:] for line in reply.iter_lines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# /v1/responses and /v1/messages with tools -----------------------------------------------------

RESPONSES_TOOL = {"type": "function", **TOOL["function"]}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}
WEATHER_ASK = "What is the weather in Paris?"


def sse_events(reply: httpx.Response) -> list[tuple[str, dict]]:
    out, name = [], None
    for line in reply.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    return out


def test_responses_function_call_items(vllm: httpx.Client) -> None:
    body = {"model": MODEL, "input": WEATHER_ASK, "tools": [RESPONSES_TOOL]}
    reply = vllm.post("/v1/responses", json=body).json()
    # responses/utils.py build_response_output_items: a ResponseFunctionToolCall per call, its
    # call_id the parser's id, no message item when the parser left no content.
    [item] = reply["output"]
    assert set(item) == {"arguments", "call_id", "name", "type", "id", "namespace", "status"}
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert item["id"].startswith("fc_") and len(item["call_id"]) == 9
    assert json.loads(item["arguments"]) == {"city": "Paris"}
    assert reply["tool_choice"] == "auto" and reply["tools"] == [RESPONSES_TOOL]
    assert reply["status"] == "completed"
    # protocol.py ResponsesRequest.check_tool_usage: without tools "auto" becomes "none";
    # from_request: max_output_tokens is the sampling params' (clamped) max_tokens.
    plain = vllm.post("/v1/responses", json={"model": MODEL, "input": "hi"}).json()
    assert plain["tool_choice"] == "none"
    assert plain["max_output_tokens"] == 1000 - plain["usage"]["input_tokens"]


def test_responses_function_call_stream_order(vllm: httpx.Client) -> None:
    body = {"model": MODEL, "input": WEATHER_ASK, "tools": [RESPONSES_TOOL], "stream": True}
    with vllm.stream("POST", "/v1/responses", json=body) as reply:
        events = sse_events(reply)
    kinds = [data["type"] for _, data in events]
    # streaming_events.py SimpleStreamingEventProcessor: emit_simple_tool_call_open, one
    # function_call_arguments.delta per argument piece, emit_simple_tool_call_done.
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas >= 2
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [name for name, _ in events] == kinds  # api_router.py: "event: TYPE"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    added, done = events[2][1]["item"], events[-2][1]["item"]
    assert added["status"] == "in_progress" and added["arguments"] == ""
    pieces = "".join(d["delta"] for _, d in events if d["type"].endswith("arguments.delta"))
    assert json.loads(pieces) == {"city": "Paris"}
    assert events[-3][1]["arguments"] == pieces == done["arguments"]
    assert events[-3][1]["name"] == "get_weather"
    assert done["id"] == added["id"] and done["call_id"] == added["call_id"]
    assert done["status"] == "completed"
    assert events[-1][1]["response"]["output"] == [done]


def test_responses_tool_choice_validation(vllm: httpx.Client) -> None:
    # protocol.py ResponsesRequest.check_tool_usage (a "before" model validator).
    body = {"model": MODEL, "input": "hi", "tool_choice": "required"}
    reply = vllm.post("/v1/responses", json=body)
    message = "Tool choice 'required' must be specified with 'tools' parameter."
    assert reply.status_code == 400
    assert reply.json() == value_error(message, "tool_choice", body)
    body = {"model": MODEL, "input": "hi", "tools": [RESPONSES_TOOL],
            "tool_choice": {"type": "function", "name": "nope"}}  # fmt: skip
    reply = vllm.post("/v1/responses", json=body)
    message = "Tool choice 'function' not found in 'tools' parameter."
    assert reply.status_code == 400 and reply.json() == value_error(message, "tool_choice", body)


def test_messages_tool_use_blocks(vllm: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "tools": [ANTHROPIC_TOOL],
        "messages": [{"role": "user", "content": WEATHER_ASK}],
    }
    reply = vllm.post("/v1/messages", json=body).json()
    # anthropic/serving.py messages_full_converter + api_router.py model_dump(exclude_none):
    # the chat completion's id, a tool_use block per call, no stop_sequence key when None.
    assert reply["id"].startswith("chatcmpl-") and "stop_sequence" not in reply
    [block] = reply["content"]
    assert set(block) == {"type", "id", "name", "input"}
    assert block["type"] == "tool_use" and block["input"] == {"city": "Paris"}
    assert len(block["id"]) == 9 and reply["stop_reason"] == "tool_use"
    assert set(reply["usage"]) == {"input_tokens", "output_tokens"}
    # _convert_tool_choice: {"type": "tool"} is a named tool choice, which the chat layer
    # finishes with "stop"; _to_anthropic_stop_reason still says "tool_use".
    named = vllm.post(
        "/v1/messages", json={**body, "tool_choice": {"type": "tool", "name": "get_weather"}}
    ).json()
    assert named["stop_reason"] == "tool_use" and named["content"][0]["type"] == "tool_use"
    none = vllm.post("/v1/messages", json={**body, "tool_choice": {"type": "none"}}).json()
    assert none["stop_reason"] == "end_turn" and none["content"][0]["type"] == "text"


def test_messages_tool_use_stream_events(vllm: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "tools": [ANTHROPIC_TOOL],
        "messages": [{"role": "user", "content": WEATHER_ASK}],
    }
    with vllm.stream("POST", "/v1/messages", json=body) as reply:
        events = sse_events(reply)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    # serving.py message_stream_converter: a tool call with an id and a name starts a
    # tool_use block (input {}), its argument pieces are input_json_delta events.
    assert deltas >= 2
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[1][1]
    assert start["index"] == 0 and start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["input"] == {} and start["content_block"]["name"] == "get_weather"
    parts = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {p["type"] for p in parts} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in parts)) == {"city": "Paris"}
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_messages_errors(vllm: httpx.Client) -> None:
    question = [{"role": "user", "content": "hi"}]
    # api_router.py translate_error_response: errors from serving in Anthropic's shape.
    missing = vllm.post(
        "/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": question}
    )
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `nope` does not exist."},
    }
    too_long = vllm.post(
        "/v1/messages", json={"model": MODEL, "max_tokens": 5000, "messages": question}
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["type"] == "invalid_request_error"
    # A pydantic error in AnthropicMessagesRequest is a RequestValidationError: vLLM's own
    # handler answers (serve/exception_handling/handlers/validation.py), not the Anthropic shape.
    body = {"model": MODEL, "messages": question}
    reply = vllm.post("/v1/messages", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": "1 validation error:\n  {'type': 'missing', 'loc': 'body.max_tokens', "
        "'msg': 'Field required', 'input': '<dict of 2 items>'}",
        "type": "Bad Request",
        "param": "body.max_tokens",
        "code": 400,
    }
    # protocol.py AnthropicMessagesRequest.validate_max_tokens
    zero = vllm.post("/v1/messages", json={**body, "max_tokens": 0}).json()["error"]
    assert "Value error, max_tokens must be positive" in zero["message"]
    assert zero["param"] == "body.max_tokens"


# Token counts: vLLM v1 counts the EOS token ---------------------------------------------------


def _counter(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_completion_tokens_include_the_eos_token(vllm: httpx.Client) -> None:
    """v1/core/sched/scheduler.py _update_request_with_output appends the sampled EOS before
    sched/utils.py check_stop finishes on it, so the output's token_ids hold it: usage
    (chat_completion/serving.py, stream_processor.py num_output_tokens), the streamed usage and
    vllm:generation_tokens_total (v1/metrics/stats.py IterationStats.update_from_output) all
    count it. A length finish has no EOS; a stop string counts the tokens through the one that
    completed it (v1/engine/output_processor.py _trim_surplus_tokens)."""
    ask = [{"role": "user", "content": "Say 'a b c'"}]
    before = _counter(vllm.get("/metrics").text, "vllm:generation_tokens_total")
    whole = vllm.post("/v1/chat/completions", json=chat(messages=ask)).json()
    assert whole["choices"][0]["message"]["content"] == "a b c"
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"]["completion_tokens"] == 4  # three words and the EOS
    body = chat(messages=ask, stream=True,
                stream_options={"include_usage": True, "continuous_usage_stats": True})  # fmt: skip
    with vllm.stream("POST", "/v1/chat/completions", json=body) as reply:
        chunks = [json.loads(x[6:]) for x in reply.iter_lines() if x.startswith("data: {")]
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    last_word = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")][-1]
    # The EOS is its own decode step: the finish chunk (no text) carries its count.
    assert last_word["usage"]["completion_tokens"] == 3
    assert (
        finish["usage"]["completion_tokens"] == 4 and chunks[-1]["usage"]["completion_tokens"] == 4
    )
    short = vllm.post("/v1/chat/completions", json=chat(messages=ask, max_tokens=2)).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 2
    stopped = vllm.post("/v1/chat/completions", json=chat(messages=ask, stop=[" b"])).json()
    assert stopped["choices"][0]["message"]["content"] == "a"
    assert stopped["choices"][0]["stop_reason"] == " b"
    assert stopped["usage"]["completion_tokens"] == 2  # "a" and " b", no EOS
    text = {"model": MODEL, "prompt": "Say 'a b c'", "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with vllm.stream("POST", "/v1/completions", json=text) as reply:
        pieces = [json.loads(x[6:]) for x in reply.iter_lines() if x.startswith("data: {")]
    # completion/serving.py: the EOS output is a chunk like any other, with text "".
    ends = [p["choices"][0] for p in pieces if p["choices"]][-2:]
    assert [(c["text"], c["finish_reason"]) for c in ends] == [(" c", None), ("", "stop")]
    assert pieces[-1]["usage"]["completion_tokens"] == 4
    after = _counter(vllm.get("/metrics").text, "vllm:generation_tokens_total")
    assert after - before == 4 + 4 + 2 + 2 + 4


def test_kv_blocks_run_out_and_the_last_admitted_is_preempted() -> None:
    """v1/core/sched/scheduler.py schedule(): when a running request needs a KV block and none
    is free, the last-admitted one is preempted and recomputed later: a longer answer for
    it, and vllm:num_preemptions_total (v1/metrics/loggers.py) counts it."""
    import asyncio
    import time

    # 9 blocks of 16 tokens, 8 usable; each answer below needs 4 blocks by its end.
    config = SimulatorConfig(port=0, quiet=True, kv_cache_tokens=9 * 16, max_model_len=144,
                             ttft=0.05, tpot=0.004)  # fmt: skip
    body = {"model": MODEL, "prompt": "go", "max_tokens": 60, "ignore_eos": True, "stream": True}

    async def one(client: httpx.AsyncClient) -> tuple[float, int]:
        started, texts = time.monotonic(), 0
        async with client.stream("POST", "/v1/completions", json=body) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    texts += 1
        return time.monotonic() - started, texts

    async def run(base: str) -> list[tuple[float, int]]:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30) as client:
            return await asyncio.gather(*(one(client) for _ in range(3)))

    with SimulatorThread(config) as sim:
        results = asyncio.run(run(sim.base_url))
        metrics = http_get(sim.base_url + "/metrics").text
    assert [texts for _, texts in results] == [60, 60, 60]  # recomputed, nothing lost
    assert _counter(metrics, "vllm:num_preemptions_total") >= 1
    assert _counter(metrics, "vllm:kv_cache_usage_perc") == 0.0  # all blocks back
    durations = sorted(d for d, _ in results)
    # The victim waited for blocks, then paid a prefill (ttft) again.
    assert durations[-1] > durations[0] + 0.05, durations


def test_messages_nested_type_errors_like_pydantic(vllm: httpx.Client) -> None:
    # Expected texts: pydantic 2 validating anthropic/protocol.py AnthropicMessagesRequest
    # (AnthropicMessage, AnthropicTool, AnthropicToolChoice), rendered by vLLM's handler.
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "hi"}]}
    reply = vllm.post("/v1/messages", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': 'body.messages.0.role', "
        "'msg': \"Input should be 'user', 'assistant' or 'system'\", 'input': 'tool', 'ctx': "
        "{'expected': \"'user', 'assistant' or 'system'\"}}",
        "type": "Bad Request",
        "param": "body.messages.0.role",
        "code": 400,
    }
    body = {"model": MODEL, "max_tokens": "x", "messages": [{"role": "user", "content": 3}],
            "tools": [{"name": "a"}], "tool_choice": {"type": "some"}}  # fmt: skip
    error = vllm.post("/v1/messages", json=body).json()["error"]
    assert error["param"] == "body.messages.0.content"
    assert error["message"] == (
        "5 validation errors:\n"
        "  {'type': 'string_type', 'loc': 'body.messages.0.content', 'msg': 'Input should be a "
        "valid string', 'input': '3'}\n"
        "  {'type': 'list_type', 'loc': 'body.messages.0.content', 'msg': 'Input should be a "
        "valid list', 'input': '3'}\n"
        "  {'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a valid "
        "integer, unable to parse string as an integer', 'input': 'x'}\n"
        "  {'type': 'literal_error', 'loc': 'body.tool_choice.type', 'msg': \"Input should be "
        "'auto', 'any', 'tool' or 'none'\", 'input': 'some', 'ctx': {'expected': \"'auto', "
        "'any', 'tool' or 'none'\"}}\n"
        "  {'type': 'missing', 'loc': 'body.tools.0.input_schema', 'msg': 'Field required', "
        "'input': '<dict of 1 items>'}"
    )
