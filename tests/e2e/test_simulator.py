"""The simulator as real processes on 127.0.0.1: endpoints, shapes, logs, failures, signals.

Servers that many tests share are module-scoped; every failure mode gets its own process.
Every wait is a poll with a deadline; every process is stopped in a fixture or a finally.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette

from conftest import DATA_DIR, SECRET_VARS, SIGINT_DISPOSITIONS, pick_port, with_sigint
from helpers import http_get
from msmall.httpclient import new_client
from msmall.simulator import FAIL_MODES, SimulatorConfig, SimulatorThread, build_app
from msmall.simulator.config import ConfigError, config_from_args, parse_ollama_host
from msmall.simulator.generation import build_arguments
from msmall.simulator.harness import EngineProcess, simulator_argv
from msmall.simulator.images import ImageError, image_tokens, inspect_image, png_data_url, solid_png
from msmall.simulator.state import keep_alive_seconds

READY = "Application startup complete."
OLLAMA_READY = "Listening on"
MODEL = "mistral-small-3.1"
TAG = "mistral-small3.1:24b-instruct-2503-q4_K_M"
RED_PNG = png_data_url(solid_png(32, 32, (220, 20, 20)))
JPEG = (
    "data:image/jpeg;base64,"
    + base64.b64encode((DATA_DIR / "simulator" / "python.jpg").read_bytes()).decode()
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*SECRET_VARS, "OLLAMA_HOST")}
    env.update(HOME=str(home), NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def start(
    *args: str,
    ready: str | None = READY,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    sigint: str = "default",
) -> EngineProcess:
    """Start the simulator; wait for ``ready`` (None: do not wait). Stops it on any failure.

    The SIGINT disposition is set explicitly, whatever pytest itself inherited.
    """
    argv = with_sigint(simulator_argv(*args), sigint)
    engine = EngineProcess(argv, env or clean_env(home or Path.cwd()))
    engine.start()
    try:
        if ready:
            engine.wait_for_line(ready, timeout=15)
    except BaseException:
        engine.stop()
        raise
    return engine


def client(port: int) -> httpx.Client:
    return new_client(f"http://127.0.0.1:{port}", timeout=10)


def chat_body(content: object, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def image_message(url: str, text: str = "What colour is this?") -> list[dict]:
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The module's default vLLM-flavor server; its port is ``engine.port``."""
    port = pick_port()
    engine = start("--port", str(port), home=tmp_path_factory.mktemp("home"))
    engine.port = port  # type: ignore[attr-defined]
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def vllm_port(vllm_engine: EngineProcess) -> int:
    return vllm_engine.port  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def keyed_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = pick_port()
    env = clean_env(tmp_path_factory.mktemp("home"))
    env["VLLM_API_KEY"] = "sk-sim-test"
    engine = start("--port", str(port), env=env)
    try:
        yield port
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def ollama_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = pick_port()
    engine = start(
        "--flavor",
        "ollama",
        "--port",
        str(port),
        ready=OLLAMA_READY,
        home=tmp_path_factory.mktemp("home"),
    )
    try:
        yield port
    finally:
        engine.stop()


# Pure helpers (no server) ----------------------------------------------------------------------


def test_images_are_checked_and_seen() -> None:
    info = inspect_image(solid_png(64, 48, (30, 60, 220)))
    assert (info.format, info.width, info.height, info.colour) == ("png", 64, 48, "blue")
    jpeg = inspect_image((DATA_DIR / "simulator" / "python.jpg").read_bytes())
    assert (jpeg.format, jpeg.width, jpeg.height) == ("jpeg", 16, 16)
    with pytest.raises(ImageError):
        inspect_image(b"definitely not an image")
    # Pixtral's budget: 1540 px max side, 28-px cells, one break token per row.
    assert image_tokens(1540, 1540) == image_tokens(4000, 4000) == 3080
    assert image_tokens(28, 28) == 2


def test_config_validates_and_reads_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_ollama_host("0.0.0.0") == ("0.0.0.0", 11434)
    assert parse_ollama_host("http://127.0.0.1:9999/") == ("127.0.0.1", 9999)
    assert parse_ollama_host(":1234") == ("127.0.0.1", 1234)
    assert parse_ollama_host("[::1]:7") == ("::1", 7)
    with pytest.raises(ConfigError):
        SimulatorConfig(fail=frozenset({"melt"}))
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.2:4321")
    config = config_from_args(["--flavor", "ollama"])
    assert (config.host, config.bind_port, config.model_name) == ("127.0.0.2", 4321, TAG)
    assert config_from_args(["--flavor", "ollama", "--port", "5"]).bind_port == 5
    vllm = config_from_args([])
    assert (vllm.host, vllm.bind_port, vllm.model_name, vllm.context_length) == (
        "127.0.0.1",
        8000,
        MODEL,
        32768,
    )
    assert set(FAIL_MODES) >= {
        "oom-on-load",
        "kv-too-small",
        "http-503",
        "tools-as-text",
        "no-vision",
        "pull-error",
        "cpu-offload",
        "no-tools",
        "exit-after-ready",
    }


def test_keep_alive_and_tool_arguments() -> None:
    assert keep_alive_seconds(-1) is None
    assert keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds(0) == 0
    with pytest.raises(ValueError):
        keep_alive_seconds("soon")
    schema = WEATHER_TOOL["function"]["parameters"]
    assert build_arguments(schema, "What is the weather in Lyon?") == {
        "city": "Lyon",
        "unit": "celsius",
    }


def test_build_app_serves_in_process() -> None:
    app = build_app(SimulatorConfig(quiet=True))
    assert isinstance(app, Starlette)
    transport = httpx.ASGITransport(app=app)

    async def probe() -> tuple[int, dict]:
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
            health = await http.get("/health")
            reply = await http.post("/v1/chat/completions", json=chat_body("What is 6*7?"))
            return health.status_code, reply.json()

    import asyncio

    status, body = asyncio.run(probe())
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "42"


def test_simulator_thread_runs_on_a_free_port() -> None:
    with SimulatorThread(SimulatorConfig(port=0, quiet=True, flavor="ollama", pulled=True)) as sim:
        reply = http_get(sim.base_url + "/api/tags")
        assert [m["name"] for m in reply.json()["models"]] == [TAG]
    assert sim.exit_code == 0


# vLLM flavor -------------------------------------------------------------------------------


def test_vllm_basic_endpoints(vllm_port: int) -> None:
    with client(vllm_port) as http:
        health = http.get("/health")
        assert (health.status_code, health.content) == (200, b"")
        assert http.get("/version").json() == {"version": "0.33.0"}
        models = http.get("/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["max_model_len"], m["owned_by"]) for m in models["data"]] == [
            (MODEL, 32768, "vllm")
        ]
        assert http.get("/nope").json() == {"detail": "Not Found"}
        assert "vllm:num_requests_running" in http.get("/metrics").text


def test_vllm_logs_like_vllm(vllm_engine: EngineProcess, vllm_port: int) -> None:
    engine = vllm_engine
    with client(vllm_port) as http:
        http.get("/health")
    engine.wait_for_line('"GET /health HTTP/1.1" 200 OK', timeout=5)
    out = engine.output
    assert re.search(
        r"\(EngineCore pid=\d+\) INFO \d\d-\d\d [\d:]{8} \[gpu_model_runner\.py:\d+\] "
        r"Model loading took 14\.25 GiB memory and",
        out,
    )
    assert (
        "GPU KV cache size: 39,120 tokens, Maximum concurrency for 32,768 tokens per request: 1.19x"
        in out
    )
    lines = engine.lines
    started = next(
        i for i, line in enumerate(lines) if "Starting vLLM server on http://127.0.0.1:" in line
    )
    ready = next(i for i, line in enumerate(lines) if line.endswith("INFO:     " + READY))
    assert started < ready


def test_vllm_chat_non_streaming(vllm_port: int) -> None:
    with client(vllm_port) as http:
        body = http.post("/v1/chat/completions", json=chat_body("What is 2+3?")).json()
        choice = body["choices"][0]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert (choice["message"]["content"], choice["finish_reason"]) == ("5", "stop")
        assert (
            body["usage"]["total_tokens"]
            == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )
        long = http.post(
            "/v1/chat/completions", json=chat_body("Tell me something", max_tokens=3)
        ).json()
        assert long["choices"][0]["finish_reason"] == "length"
        assert long["usage"]["completion_tokens"] == 3


def test_vllm_errors_have_vllm_shapes(vllm_port: int) -> None:
    with client(vllm_port) as http:
        wrong = http.post("/v1/chat/completions", json={**chat_body("hi"), "model": "gpt-4"})
        assert wrong.status_code == 404
        assert wrong.json() == {
            "error": {
                "message": "The model `gpt-4` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }
        too_long = http.post("/v1/chat/completions", json=chat_body("hi", max_tokens=40000))
        assert too_long.status_code == 400
        # vllm/renderers/params.py TokenizeParams.__post_init__ (vLLM 0.33).
        assert too_long.json()["error"] == {
            "message": "max_tokens=40000 cannot be greater than max_model_len=32768. Please "
            "request fewer output tokens. (parameter=max_tokens, value=40000)",
            "type": "BadRequestError",
            "param": "max_tokens",
            "code": 400,
        }
        garbage = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
        bad_image = http.post("/v1/chat/completions", json=chat_body(image_message(garbage)))
        assert bad_image.status_code == 400
        assert bad_image.json()["error"]["type"] == "BadRequestError"


def test_vllm_sees_images(vllm_port: int) -> None:
    with client(vllm_port) as http:
        red = http.post("/v1/chat/completions", json=chat_body(image_message(RED_PNG))).json()
        assert "red" in red["choices"][0]["message"]["content"]
        jpeg = http.post("/v1/chat/completions", json=chat_body(image_message(JPEG))).json()
        assert "16x16 JPEG" in jpeg["choices"][0]["message"]["content"]


def test_vllm_stream_is_sse_with_usage(vllm_port: int) -> None:
    body = chat_body(
        "Reply with 'streamed words here'", stream=True, stream_options={"include_usage": True}
    )
    with client(vllm_port) as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "streamed words here"
    # Three words and the EOS token, which vLLM v1 counts.
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_vllm_tool_calls(vllm_port: int) -> None:
    body = chat_body("What's the weather in Paris?", tools=[WEATHER_TOOL])
    with client(vllm_port) as http:
        reply = http.post("/v1/chat/completions", json=body).json()
        none = http.post("/v1/chat/completions", json={**body, "tool_choice": "none"}).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call["id"])  # Mistral's tool call ids
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    # ChatMessage._serialize drops an empty tool_calls list (chat_completion/protocol.py).
    assert "tool_calls" not in none["choices"][0]["message"]


def test_openai_client_against_vllm(vllm_port: int) -> None:
    api = openai.OpenAI(
        base_url=f"http://127.0.0.1:{vllm_port}/v1",
        api_key="unused",
        max_retries=0,
        http_client=new_client(f"http://127.0.0.1:{vllm_port}/v1"),
    )
    reply = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 3*4?"}]
    )
    assert reply.choices[0].message.content == "12"

    stream = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say 'one two three'"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    # Three words and the EOS token, which vLLM v1 counts.
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    tools = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
    )
    (call,) = tools.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["city"] == "Oslo"

    streamed_call = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in streamed_call
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"city": "Oslo", "unit": "celsius"}

    vision = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": image_message(RED_PNG)}]
    )
    assert "red" in vision.choices[0].message.content

    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def test_api_key_guards_only_v1(keyed_port: int) -> None:
    with client(keyed_port) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/version").status_code == 200
        denied = http.get("/v1/models")
        assert (denied.status_code, denied.json()) == (401, {"error": "Unauthorized"})
        assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            http.get("/v1/models", headers={"Authorization": "Bearer sk-sim-test"}).status_code
            == 200
        )
    good = openai.OpenAI(
        base_url=f"http://127.0.0.1:{keyed_port}/v1",
        api_key="sk-sim-test",
        max_retries=0,
        http_client=new_client(f"http://127.0.0.1:{keyed_port}/v1"),
    )
    assert good.models.list().data[0].id == MODEL
    bad = openai.OpenAI(
        base_url=f"http://127.0.0.1:{keyed_port}/v1",
        api_key="nope",
        max_retries=0,
        http_client=new_client(f"http://127.0.0.1:{keyed_port}/v1"),
    )
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# Startup, signals --------------------------------------------------------------------------


def test_port_refuses_connections_while_loading(tmp_path: Path, free_port: int) -> None:
    engine = start("--port", str(free_port), "--startup-delay", "1", ready=None, home=tmp_path)
    try:
        engine.wait_for_line("Starting to load model", timeout=10)
        # Bound but not listening, exactly like vLLM: the port is taken, connections refused.
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", free_port), timeout=2),
        ):
            pass
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", free_port))
        assert READY not in engine.output
        engine.wait_for_line(READY, timeout=15)
        with client(free_port) as http:
            assert http.get("/health").status_code == 200
    finally:
        assert engine.stop() == 0


@pytest.mark.parametrize("sigint", SIGINT_DISPOSITIONS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(sig: int, tmp_path: Path, free_port: int, sigint: str) -> None:
    engine = start("--port", str(free_port), home=tmp_path, sigint=sigint)
    try:
        with client(free_port) as http:
            assert http.get("/health").status_code == 200
    finally:
        code = engine.stop(sig)
    assert code == 0
    assert "Traceback" not in engine.output
    assert "Finished server process" in engine.output


def test_sigterm_during_load_exits_zero(tmp_path: Path, free_port: int) -> None:
    engine = start(
        "--port",
        str(free_port),
        "--startup-delay",
        "30",
        ready="Starting to load model",
        home=tmp_path,
    )
    started = time.monotonic()
    assert engine.stop() == 0
    assert time.monotonic() - started < 5
    assert READY not in engine.output


# Failure injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("oom-on-load", "CUDA out of memory. Tried to allocate"),
        (
            "low-free-memory",
            "Free memory on device cuda:0 (1.53/22.05 GiB) on startup is less than desired GPU memory utilization",
        ),
        (
            "kv-too-small",
            "ValueError: To serve at least one request with the model's max seq len (32768)",
        ),
    ],
)
def test_load_failures_exit_1_without_listening(
    mode: str, expected: str, tmp_path: Path, free_port: int
) -> None:
    engine = start("--port", str(free_port), "--fail", mode, ready=None, home=tmp_path)
    try:
        assert engine.wait_for_exit(15) == 1
    finally:
        engine.stop()
    out = engine.output
    assert expected in out
    assert "EngineCore failed to start." in out
    assert "RuntimeError: Engine core initialization failed." in out
    assert READY not in out and "Starting vLLM server" not in out


def test_kv_cache_smaller_than_max_model_len_fails_like_vllm(
    tmp_path: Path, free_port: int
) -> None:
    engine = start(
        "--port",
        str(free_port),
        "--max-model-len",
        "131072",
        "--kv-cache-tokens",
        "39120",
        ready=None,
        home=tmp_path,
    )
    try:
        assert engine.wait_for_exit(15) == 1
    finally:
        engine.stop()
    assert re.search(
        r"max seq len \(131072\), \(20\.00 GiB KV cache is needed.*estimated maximum "
        r"model length is 39120\.",
        engine.output,
    )


def test_http_503_vllm(tmp_path: Path, free_port: int) -> None:
    engine = start("--port", str(free_port), "--fail", "http-503", home=tmp_path)
    try:
        with client(free_port) as http:
            assert http.get("/health").status_code == 503
            chat = http.post("/v1/chat/completions", json=chat_body("hi"))
            # vllm/entrypoints/serve/exception_handling/error_response.py: EngineDeadError
            # -> 500 InternalServerError with EngineDeadError.CLIENT_MESSAGE.
            assert chat.status_code == 500 and chat.json()["error"] == {
                "message": "The server had an error while processing your request.",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
    finally:
        engine.stop()
    assert "EngineDeadError" in engine.output


def test_tools_as_text_and_no_vision(tmp_path: Path, free_port: int) -> None:
    engine = start(
        "--port", str(free_port), "--fail", "tools-as-text", "--fail", "no-vision", home=tmp_path
    )
    try:
        with client(free_port) as http:
            body = chat_body("Weather in Rome?", tools=[WEATHER_TOOL])
            text = http.post("/v1/chat/completions", json=body).json()["choices"][0]
            named = http.post(
                "/v1/chat/completions",
                json={
                    **body,
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                },
            ).json()
            image = http.post("/v1/chat/completions", json=chat_body(image_message(RED_PNG)))
    finally:
        engine.stop()
    assert "tool_calls" not in text["message"] and text["finish_reason"] == "stop"
    content = text["message"]["content"]
    assert content.startswith("[TOOL_CALLS][")
    assert json.loads(content[len("[TOOL_CALLS]") :]) == [
        {"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}
    ]
    # A named tool choice goes through structured outputs, which work without a parser.
    assert named["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert image.status_code == 400
    assert image.json() == {
        "error": {
            "message": "At most 0 image(s) may be provided in one prompt.",
            "type": "BadRequestError",
            "param": "image",
            "code": 400,
        }
    }


def test_no_vision_flag_and_tool_choice_400(tmp_path: Path, free_port: int) -> None:
    engine = start(
        "--port", str(free_port), "--no-vision", "--fail", "tool-choice-400", home=tmp_path
    )
    try:
        with client(free_port) as http:
            image = http.post("/v1/chat/completions", json=chat_body(image_message(RED_PNG)))
            tools = http.post(
                "/v1/chat/completions", json=chat_body("Weather?", tools=[WEATHER_TOOL])
            )
            plain = http.post("/v1/chat/completions", json=chat_body("What is 1+1?"))
    finally:
        engine.stop()
    assert image.status_code == 400 and "At most 0 image(s)" in image.json()["error"]["message"]
    assert tools.status_code == 400
    assert tools.json()["error"]["message"] == (
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    )
    assert plain.json()["choices"][0]["message"]["content"] == "2"


@pytest.mark.parametrize("flavor", ["vllm", "ollama"])
def test_exit_after_ready(flavor: str, tmp_path: Path, free_port: int) -> None:
    ready = READY if flavor == "vllm" else OLLAMA_READY
    engine = start(
        "--flavor",
        flavor,
        "--port",
        str(free_port),
        "--fail",
        "exit-after-ready",
        ready=ready,
        home=tmp_path,
    )
    try:
        assert engine.wait_for_exit(10) == 1
    finally:
        engine.stop()
    assert "Traceback" not in engine.output


# Ollama flavor -----------------------------------------------------------------------------


def test_ollama_lifecycle(ollama_port: int) -> None:
    with client(ollama_port) as http:
        root = http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        assert http.get("/api/version").json() == {"version": "0.33.0"}
        assert http.get("/api/tags").json() == {"models": []}
        assert http.get("/v1/models").json()["data"] == []
        missing = http.post("/api/generate", json={"model": TAG, "keep_alive": -1})
        assert missing.status_code == 404
        assert missing.json() == {"error": f'model "{TAG}" not found, try pulling it first'}

        with http.stream("POST", "/api/pull", json={"model": TAG}) as pull:
            assert pull.status_code == 200
            lines = [json.loads(line) for line in pull.iter_lines() if line]
        assert lines[0] == {"status": "pulling manifest"}
        assert lines[-1] == {"status": "success"}
        progress = [line for line in lines if "completed" in line]
        assert progress and all(
            set(line) == {"status", "digest", "total", "completed"} for line in progress
        )
        assert progress[0]["total"] == 15_000_000_000

        (tag,) = http.get("/api/tags").json()["models"]
        assert (tag["name"], tag["details"]["quantization_level"]) == (TAG, "Q4_K_M")
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [TAG]
        show = http.post("/api/show", json={"model": TAG}).json()
        assert show["capabilities"] == ["completion", "vision", "tools"]

        assert http.get("/api/ps").json() == {"models": []}
        preload = http.post("/api/generate", json={"model": TAG, "keep_alive": -1}).json()
        assert (preload["done"], preload["done_reason"], preload["response"]) == (True, "load", "")
        (running,) = http.get("/api/ps").json()["models"]
        (sample,) = json.loads((DATA_DIR / "simulator" / "api-ps.json").read_text())["models"]
        # The sample predates context_length (FACTS.md: 0.33 reports it).
        assert set(running) == set(sample) | {"context_length"}
        assert running["size_vram"] == running["size"] and running["context_length"] == 4096
        assert running["expires_at"].startswith("2") and int(running["expires_at"][:4]) > 2200

        api = openai.OpenAI(
            base_url=f"http://127.0.0.1:{ollama_port}/v1",
            api_key="ollama",
            max_retries=0,
            http_client=new_client(f"http://127.0.0.1:{ollama_port}/v1"),
        )
        reply = api.chat.completions.create(
            model=TAG, messages=[{"role": "user", "content": "What is 9-4?"}]
        )
        assert reply.choices[0].message.content == "5" and reply.system_fingerprint == "fp_ollama"
        (call,) = (
            api.chat.completions.create(
                model=TAG,
                messages=[{"role": "user", "content": "Weather in Kyiv?"}],
                tools=[WEATHER_TOOL],
            )
            .choices[0]
            .message.tool_calls
        )
        assert json.loads(call.function.arguments)["city"] == "Kyiv" and call.id.startswith("call_")
        vision = api.chat.completions.create(
            model=TAG, messages=[{"role": "user", "content": image_message(RED_PNG)}]
        )
        assert "red" in vision.choices[0].message.content
        stream = api.chat.completions.create(
            model=TAG,
            messages=[{"role": "user", "content": "Say 'a b'"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b"
        assert chunks[-1].usage is not None

        generated = http.post(
            "/api/generate", json={"model": TAG, "prompt": "What is 2*8?", "stream": False}
        ).json()
        assert (generated["response"], generated["done"]) == ("16", True)
        unload = http.post("/api/generate", json={"model": TAG, "keep_alive": 0}).json()
        assert unload["done_reason"] == "unload"
        assert http.get("/api/ps").json() == {"models": []}
        assert http.get("/api/nope").text == "404 page not found"


def test_ollama_failure_modes(tmp_path: Path, free_port: int) -> None:
    engine = start(
        "--flavor",
        "ollama",
        "--port",
        str(free_port),
        "--pulled",
        "--fail",
        "cpu-offload",
        "--fail",
        "no-tools",
        "--fail",
        "no-vision",
        ready=OLLAMA_READY,
        home=tmp_path,
    )
    try:
        with client(free_port) as http:
            assert http.post("/api/show", json={"model": TAG}).json()["capabilities"] == [
                "completion"
            ]
            http.post("/api/generate", json={"model": TAG, "keep_alive": "10m"}).raise_for_status()
            (running,) = http.get("/api/ps").json()["models"]
            assert running["size_vram"] < running["size"]
            tools = http.post(
                "/v1/chat/completions",
                json={**chat_body("Weather?", tools=[WEATHER_TOOL]), "model": TAG},
            )
            assert tools.status_code == 400
            assert (
                tools.json()["error"]["message"]
                == f"registry.ollama.ai/library/{TAG} does not support tools"
            )
            image = http.post(
                "/v1/chat/completions", json={**chat_body(image_message(RED_PNG)), "model": TAG}
            )
            assert image.status_code == 500
    finally:
        engine.stop()
    assert "layers.offload=30" in engine.output


def test_ollama_pull_error_and_busy(tmp_path: Path, free_port: int) -> None:
    engine = start(
        "--flavor",
        "ollama",
        "--port",
        str(free_port),
        "--fail",
        "pull-error",
        ready=OLLAMA_READY,
        home=tmp_path,
    )
    try:
        with (
            client(free_port) as http,
            http.stream("POST", "/api/pull", json={"model": TAG}) as pull,
        ):
            assert pull.status_code == 200  # the error comes after the 200, as a stream line
            lines = [json.loads(line) for line in pull.iter_lines() if line]
        assert lines[-1] == {"error": "pull model manifest: file does not exist"}
    finally:
        engine.stop()
    busy_port = pick_port()
    busy = start(
        "--flavor",
        "ollama",
        "--port",
        str(busy_port),
        "--fail",
        "http-503",
        ready=OLLAMA_READY,
        home=tmp_path,
    )
    try:
        with client(busy_port) as http:
            assert http.get("/").status_code == 503
            assert http.post("/v1/chat/completions", json=chat_body("hi")).status_code == 503
            assert http.get("/api/version").status_code == 200
    finally:
        busy.stop()


def test_ollama_honours_ollama_host(tmp_path: Path, free_port: int) -> None:
    env = clean_env(tmp_path)
    env["OLLAMA_HOST"] = f"127.0.0.1:{free_port}"
    engine = start("--flavor", "ollama", ready=OLLAMA_READY, env=env)
    try:
        assert f"Listening on 127.0.0.1:{free_port} (version 0.33.0)" in engine.output
        with client(free_port) as http:
            assert http.get("/").text == "Ollama is running"
    finally:
        engine.stop()


def test_ollama_pulls_persist_in_models_dir(tmp_path: Path, free_port: int) -> None:
    args = (
        "--flavor",
        "ollama",
        "--port",
        str(free_port),
        "--models-dir",
        str(tmp_path / "models"),
    )
    first = start(*args, ready=OLLAMA_READY, home=tmp_path)
    try:
        with client(free_port) as http:
            assert http.post(
                "/api/pull", json={"model": "mistral-small3.1:24b", "stream": False}
            ).json() == {"status": "success"}
    finally:
        first.stop()
    second = start(*args, ready=OLLAMA_READY, home=tmp_path)
    try:
        with client(free_port) as http:
            assert [m["name"] for m in http.get("/api/tags").json()["models"]] == [
                "mistral-small3.1:24b"
            ]
    finally:
        second.stop()


def test_timings_and_image_limit_in_process() -> None:
    config = SimulatorConfig(port=0, quiet=True, ttft=0.3, tpot=0.05, max_images_per_prompt=1)
    with (
        SimulatorThread(config) as sim,
        new_client(sim.base_url) as http,
    ):
        started = time.monotonic()
        body = chat_body("Say 'a b c d e'", stream=True)
        with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            arrivals = []
            for line in reply.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 5
        assert arrivals[0] >= 0.29  # time to first token
        assert arrivals[-1] - arrivals[0] >= 4 * 0.05 * 0.9  # time per output token
        two = http.post(
            "/v1/chat/completions",
            json=chat_body([*image_message(RED_PNG), *image_message(RED_PNG)[1:]]),
        )
        assert two.status_code == 400
        assert two.json()["error"]["message"] == "At most 1 image(s) may be provided in one prompt."


def test_ollama_loads_on_first_use_in_process() -> None:
    config = SimulatorConfig(flavor="ollama", port=0, quiet=True, pulled=True, startup_delay=0.3)
    with (
        SimulatorThread(config) as sim,
        new_client(sim.base_url) as http,
    ):
        started = time.monotonic()
        http.post("/api/generate", json={"model": TAG}).raise_for_status()
        assert time.monotonic() - started >= 0.29  # the model load
        started = time.monotonic()
        http.post("/api/generate", json={"model": TAG}).raise_for_status()
        assert time.monotonic() - started < 0.25  # already loaded
        (running,) = http.get("/api/ps").json()["models"]
        assert running["name"] == TAG
