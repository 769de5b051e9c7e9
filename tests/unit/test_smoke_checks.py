"""Smoke checks against a misbehaving server: each way an endpoint can look up but not serve.

The server is a ScriptedServer on 127.0.0.1 (port 0) that answers /v1/chat/completions with what
a broken deployment really sends: vLLM without --tool-call-parser returns the model's raw
`[TOOL_CALLS][...]` text in `content` (vllm/entrypoints/openai/serving_chat.py, no parser); a
proxy that cuts the stream drops the final `data: [DONE]`; a text-only server answers an image
question without looking at the image.
"""

from __future__ import annotations

import json

import pytest

from helpers import ScriptedServer, chat_body, delta, models_body, sse
from msmall.errors import EndpointUnhealthy
from msmall.health import (
    SQUARE_COLOUR,
    TOOL_FIX,
    check_chat,
    check_stream,
    check_tools,
    check_vision,
    first_model,
    smoke,
)
from msmall.httpclient import new_client
from msmall.simulator.images import inspect_image

MODEL = "mistral-small-3.1"
CHAT = ("POST", "/v1/chat/completions")
GOOD_CALL = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
]


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def openai_request_problem(body: dict) -> str | None:
    """What vLLM's request model (ChatCompletionRequest) would reject in a chat request."""
    known = {"model", "messages", "temperature", "max_tokens", "stream", "stream_options",
             "tools", "tool_choice"}  # fmt: skip
    if set(body) - known:
        return f"unknown fields {sorted(set(body) - known)}"
    if body.get("model") != MODEL or not isinstance(body.get("messages"), list):
        return "model and messages are required"
    if not isinstance(body.get("max_tokens"), int) or body.get("temperature") != 0.15:
        return "max_tokens must be an int; msmall sends the recommended temperature 0.15"
    for message in body["messages"]:
        if set(message) != {"role", "content"} or message["role"] not in ("system", "user"):
            return f"bad message {message}"
        parts = message["content"] if isinstance(message["content"], list) else []
        for part in parts:
            if part.get("type") not in ("text", "image_url") or part["type"] not in part:
                return f"bad content part {part}"
    for tool in body.get("tools", []):
        params = tool["function"]["parameters"]
        if not set(params["required"]) <= set(params["properties"]):
            return "a required tool parameter is not among the properties"
    return None


def _run(server: ScriptedServer, check, reply, *args):
    problems: list[str] = []

    def answer(body: dict):
        problem = openai_request_problem(body)
        if problem:
            problems.append(problem)
            return (400, json.dumps({"error": {"message": problem}}))
        return reply

    server.routes = {CHAT: answer}
    with new_client(server.url, timeout=10) as client:
        result = check(client, MODEL, *args)
    assert server.requests, "no request was sent"
    assert problems == [], f"msmall sent a request vLLM would reject: {problems}"
    return result


CHAT_CASES = [
    ("ok", (200, chat_body("ready")), True, "answered 'ready'"),
    ("empty", (200, chat_body("")), False, "empty answer"),
    ("whitespace", (200, chat_body("  \n")), False, "empty answer"),
    ("null-content", (200, chat_body(None)), False, "empty answer"),
    ("http-500", (500, '{"error": {"message": "CUDA error: out of memory"}}'), False,
     "HTTP 500: CUDA error: out of memory"),
    ("http-400-plain", (400, "bad request body"), False, "HTTP 400: bad request body"),
    ("not-openai", (200, '{"result": "ready"}'), False, "malformed response"),
    ("not-json", (200, "ready"), False, "malformed response"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "ok", "detail"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES]
)
def test_chat(server: ScriptedServer, reply, ok: bool, detail: str) -> None:
    result = _run(server, check_chat, reply)
    assert (result.name, result.ok) == ("chat", ok)
    assert detail in result.detail
    # A real round trip over HTTP, measured, even when the answer was malformed.
    assert 0 < result.latency_ms < 10_000
    assert result.latency_ms == round(result.latency_ms, 1)


STREAM_CASES = [
    ("ok", (200, sse(delta("1"), delta(", 2"), delta(", 3"), "[DONE]")), True, "3 chunks"),
    ("no-done", (200, sse(delta("1"), delta(", 2"))), False, "ended without [DONE]"),
    ("no-text", (200, sse({"choices": [{"delta": {"role": "assistant"}}]}, "[DONE]")), False,
     "carried no text"),
    ("nothing", (200, []), False, "carried no text"),
    ("http-400", (400, '{"error": {"message": "stream not supported"}}'), False,
     "HTTP 400: stream not supported"),
    ("garbage-chunk", (200, [b"data: {not json\n\n"]), False, "malformed response"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "ok", "detail"), [c[1:] for c in STREAM_CASES], ids=[c[0] for c in STREAM_CASES]
)
def test_stream(server: ScriptedServer, reply, ok: bool, detail: str) -> None:
    result = _run(server, check_stream, reply)
    assert (result.name, result.ok) == ("stream", ok)
    assert detail in result.detail


def test_stream_asks_for_a_stream(server: ScriptedServer) -> None:
    _run(server, check_stream, (200, sse(delta("1"), "[DONE]")))
    body = server.requests[-1][2]
    assert body["stream"] is True
    assert body["model"] == MODEL


RAW_CALL = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
TOOL_CASES = [
    ("ok", (200, chat_body(None, GOOD_CALL)), True, 'get_weather({"city": "Paris"})'),
    ("call-as-text", (200, chat_body(RAW_CALL)), False,
     "the tool call came back as text, not tool_calls"),
    ("call-as-json-text", (200, chat_body('{"name": "get_weather", "arguments": {}}')), False,
     "came back as text"),
    ("plain-answer", (200, chat_body("It is sunny in Paris.")), False, "no tool_calls in the answer"),
    ("empty-list", (200, chat_body("", [])), False, "no tool_calls in the answer"),
    ("args-a-string", (200, chat_body(None, [{"function": {"name": "get_weather",
     "arguments": '"Paris"'}}])), False, "not an object: 'Paris'"),
    ("args-a-list", (200, chat_body(None, [{"function": {"name": "get_weather",
     "arguments": '["Paris"]'}}])), False, "not an object"),
    ("args-not-json", (200, chat_body(None, [{"function": {"name": "get_weather",
     "arguments": "{city: Paris"}}])), False, "not JSON: '{city: Paris'"),
    ("args-missing", (200, chat_body(None, [{"function": {"name": "get_weather"}}])), False,
     "not JSON"),
    ("http-400-auto-tool-choice", (400, json.dumps({"error": {"message":
     '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'}})),
     False, 'HTTP 400: "auto" tool choice requires'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "ok", "detail"), [c[1:] for c in TOOL_CASES], ids=[c[0] for c in TOOL_CASES]
)
def test_tools(server: ScriptedServer, reply, ok: bool, detail: str) -> None:
    result = _run(server, check_tools, reply, "vllm")
    assert (result.name, result.ok) == ("tools", ok)
    assert detail in result.detail
    # A failed tool check tells a vLLM user which flags fix it.
    assert result.fix == (None if ok else TOOL_FIX)


def test_tools_fix_for_ollama_names_the_model_capability(server: ScriptedServer) -> None:
    result = _run(server, check_tools, (200, chat_body("sunny")), "ollama")
    assert not result.ok
    assert "tools capability" in (result.fix or "")
    assert "--tool-call-parser" not in (result.fix or "")


def test_tools_request_offers_the_tool(server: ScriptedServer) -> None:
    _run(server, check_tools, (200, chat_body(None, GOOD_CALL)), "vllm")
    body = server.requests[-1][2]
    assert body["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]


VISION_CASES = [
    ("ok", (200, chat_body("Red.")), True, "answered 'Red.'"),
    ("ok-sentence", (200, chat_body("The square is red.")), True, "red"),
    ("image-ignored", (200, chat_body("I cannot see any image. Blue?")), False,
     "does not name the colour of the image (red)"),
    ("empty", (200, chat_body("")), False, "empty answer to an image"),
    ("http-400-text-only", (400, json.dumps({"error": {"message":
     "At most 0 image(s) may be provided in one prompt."}})), False, "HTTP 400: At most 0 image"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "ok", "detail"), [c[1:] for c in VISION_CASES], ids=[c[0] for c in VISION_CASES]
)
def test_vision(server: ScriptedServer, reply, ok: bool, detail: str) -> None:
    result = _run(server, check_vision, reply)
    assert (result.name, result.ok) == ("vision", ok)
    assert detail in result.detail
    if not ok:
        assert "--limit-mm-per-prompt" in (result.fix or "")


def test_vision_sends_a_real_png(server: ScriptedServer) -> None:
    import base64

    _run(server, check_vision, (200, chat_body("red")))
    parts = server.requests[-1][2]["messages"][-1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    # Decoded by the simulator's PNG reader: a 56 px picture whose mean colour is the square's,
    # so an engine that really looks at it can name the colour the check expects.
    info = inspect_image(png)
    assert (info.format, info.width, info.height, info.colour) == ("png", 56, 56, SQUARE_COLOUR)


def test_smoke_runs_every_check_even_after_failures(server: ScriptedServer) -> None:
    def answer(body: dict):
        if body.get("stream"):
            return (200, sse(delta("1")))  # no [DONE]
        if body.get("tools"):
            return (200, chat_body(RAW_CALL))
        if isinstance(body["messages"][-1]["content"], list):
            return (200, chat_body("red"))
        return (200, chat_body(""))

    server.routes = {CHAT: answer}
    seen: list[str] = []
    report = smoke(server.url, MODEL, on_result=lambda r: seen.append(r.name))
    assert seen == ["chat", "stream", "tools", "vision"]
    assert [c.ok for c in report.checks] == [False, False, False, True]
    assert report.ok is False
    data = report.to_dict()
    assert (data["ok"], data["model"], data["base_url"]) == (False, MODEL, server.url)
    assert [(c["name"], c["ok"], c["skipped"]) for c in data["checks"]] == [
        ("chat", False, False),
        ("stream", False, False),
        ("tools", False, False),
        ("vision", True, False),
    ]
    assert data["checks"][2]["fix"] == TOOL_FIX
    assert all(c["latency_ms"] > 0 for c in data["checks"])


def test_smoke_skips_what_was_not_asked_and_passes(server: ScriptedServer) -> None:
    def answer(body: dict):
        if body.get("stream"):
            return (200, sse(delta("1"), "[DONE]"))
        return (200, chat_body("ready"))

    server.routes = {CHAT: answer}
    report = smoke(server.url, MODEL, tools=False, vision=False)
    assert [(c.name, c.ok, c.skipped) for c in report.checks] == [
        ("chat", True, False),
        ("stream", True, False),
        ("tools", False, True),
        ("vision", False, True),
    ]
    assert report.ok is True
    # Skipped checks send nothing.
    assert len(server.requests) == 2


def test_smoke_sends_the_key(server: ScriptedServer) -> None:
    keys: list[str | None] = []
    original = server.httpd.RequestHandlerClass.do_POST

    def do_post(handler) -> None:
        keys.append(handler.headers.get("Authorization"))
        original(handler)

    server.httpd.RequestHandlerClass.do_POST = do_post
    server.routes = {CHAT: (200, chat_body("ready"))}
    smoke(server.url, MODEL, api_key="sk-smoke", tools=False, vision=False)
    assert keys == ["Bearer sk-smoke", "Bearer sk-smoke"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((401, "{}"), "needs an API key (HTTP 401)"),
        ((500, "{}"), "answered HTTP 500"),
        ((200, models_body()), "lists no model"),
    ],
    ids=["401", "500", "empty"],
)
def test_first_model_errors(server: ScriptedServer, reply, message: str) -> None:
    server.routes = {("GET", "/v1/models"): reply}
    with pytest.raises(EndpointUnhealthy, match=message.replace("(", r"\(").replace(")", r"\)")):
        first_model(server.url)


def test_first_model_picks_the_first(server: ScriptedServer) -> None:
    server.routes = {("GET", "/v1/models"): (200, models_body("a", "b"))}
    assert first_model(server.url) == "a"


def test_first_model_unreachable() -> None:
    with ScriptedServer(listening=False) as s, pytest.raises(EndpointUnhealthy) as info:
        first_model(s.url)
    assert f"cannot reach {s.url}" in str(info.value)
