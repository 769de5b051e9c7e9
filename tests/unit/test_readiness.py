"""Readiness: every answer the probe can get, and the wait loop's limits, over real HTTP.

Each case runs a ScriptedServer on 127.0.0.1 (port 0) that answers the probe's requests the way
an engine in that state does: vLLM refuses connections while loading, then answers /health (200,
or 503 once its engine died: vllm/entrypoints/openai/api_server.py `health`), then lists the
served name on /v1/models (401 there when --api-key is set, `verify_api_key`); Ollama answers
`GET /` with "Ollama is running" (ollama/server/routes.go) before anything else.
"""

from __future__ import annotations

import time

import httpx
import pytest

from helpers import ScriptedServer, models_body
from msmall.errors import EndpointUnhealthy
from msmall.health import probe, wait_ready
from msmall.httpclient import new_client

MODEL = "mistral-small-3.1"

# (case id, flavor, model asked for, routes, expected stage, text the detail must contain)
PROBE_CASES = [
    ("vllm-ready", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (200, models_body(MODEL))}, "ready", ""),
    ("vllm-health-503-engine-dead", "vllm", MODEL,
     {"/health": (503, ""), "/v1/models": (200, models_body(MODEL))}, "unhealthy", "503"),
    ("vllm-health-500", "vllm", MODEL,
     {"/health": (500, "boom"), "/v1/models": (200, models_body(MODEL))}, "starting", "500"),
    ("vllm-health-404-not-vllm-yet", "vllm", MODEL,
     {"/v1/models": (200, models_body(MODEL))}, "starting", "404"),
    ("vllm-models-401-needs-key", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (401, '{"error": "Unauthorized"}')}, "unhealthy", "401"),
    ("vllm-models-404", "vllm", MODEL,
     {"/health": (200, "")}, "starting", "404"),
    ("vllm-models-500", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (500, "oops")}, "starting", "500"),
    ("vllm-models-503", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (503, "busy")}, "starting", "503"),
    ("vllm-models-not-json", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (200, "<html>proxy</html>")}, "starting", ""),
    ("vllm-wrong-model-name", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (200, models_body("Qwen/Qwen3-0.6B"))}, "no-model",
     "Qwen/Qwen3-0.6B"),
    ("vllm-no-model-listed", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (200, models_body())}, "no-model", MODEL),
    ("vllm-any-model-when-none-asked", "vllm", None,
     {"/health": (200, ""), "/v1/models": (200, models_body("anything"))}, "ready", ""),
    ("vllm-second-of-two-models", "vllm", MODEL,
     {"/health": (200, ""), "/v1/models": (200, models_body("other", MODEL))}, "ready", ""),
    ("ollama-ready", "ollama", MODEL,
     {"/": (200, "Ollama is running"), "/api/version": (200, '{"version": "0.33.0"}'),
      "/v1/models": (200, models_body(MODEL))}, "ready", ""),
    ("ollama-root-other-text", "ollama", MODEL,
     {"/": (200, "Welcome to nginx!"), "/api/version": (200, '{"version": "0.33.0"}'),
      "/v1/models": (200, models_body(MODEL))}, "starting", "200"),
    ("ollama-root-500", "ollama", MODEL,
     {"/": (500, "Ollama is running"), "/api/version": (200, "{}"),
      "/v1/models": (200, models_body(MODEL))}, "starting", "500"),
    ("ollama-version-500", "ollama", MODEL,
     {"/": (200, "Ollama is running"), "/api/version": (500, "{}"),
      "/v1/models": (200, models_body(MODEL))}, "starting", "500"),
    ("ollama-model-not-pulled", "ollama", MODEL,
     {"/": (200, "Ollama is running"), "/api/version": (200, "{}"),
      "/v1/models": (200, models_body("llama3:8b"))}, "no-model", "llama3:8b"),
    ("ollama-no-model-asked-skips-models", "ollama", None,
     {"/": (200, "Ollama is running"), "/api/version": (200, "{}")}, "ready", ""),
]  # fmt: skip


def _client(url: str) -> httpx.Client:
    return new_client(url, timeout=5)


@pytest.mark.parametrize(
    ("flavor", "model", "routes", "stage", "detail"),
    [case[1:] for case in PROBE_CASES],
    ids=[case[0] for case in PROBE_CASES],
)
def test_probe_reads_each_answer(
    flavor: str, model: str | None, routes: dict, stage: str, detail: str
) -> None:
    with ScriptedServer() as server:
        server.routes = {("GET", path): reply for path, reply in routes.items()}
        with _client(server.url) as client:
            state = probe(client, flavor, model)
    assert state.stage == stage, state
    assert detail in state.detail


def test_probe_refused_while_the_port_does_not_listen() -> None:
    with ScriptedServer(listening=False) as server, _client(server.url) as client:
        assert probe(client, "vllm", MODEL).stage == "refused"
        assert probe(client, "ollama", MODEL).stage == "refused"


def test_probe_ollama_never_asks_vllm_routes() -> None:
    with ScriptedServer() as server:
        server.routes = {
            ("GET", "/"): (200, "Ollama is running"),
            ("GET", "/api/version"): (200, "{}"),
            ("GET", "/v1/models"): (200, models_body(MODEL)),
        }
        with _client(server.url) as client:
            assert probe(client, "ollama", MODEL).stage == "ready"
    assert [path for _, path, _ in server.requests] == ["/", "/api/version", "/v1/models"]


# ---------------------------------------------------------------------------------------------
# The wait loop. Phases change from the on_tick callback, so the test never sleeps to sync.


def test_refused_then_starting_then_ready() -> None:
    """The real order of a vLLM start: refused, /health 200 before the name is served, ready."""
    seen: list[str] = []
    with ScriptedServer(listening=False) as server:

        def tick(state) -> None:
            seen.append(state.stage)
            if seen.count("refused") == 3 and len(seen) == 3:
                server.routes = {("GET", "/health"): (200, "")}
                server.listen()
            elif seen[-1] == "starting" and seen.count("starting") == 2:
                server.routes[("GET", "/v1/models")] = (200, models_body(MODEL))

        waited = wait_ready(server.url, "vllm", MODEL, on_tick=tick, timeout_s=20)
    assert seen == ["refused"] * 3 + ["starting"] * 2 + ["ready"]
    assert waited >= 0


@pytest.mark.parametrize("status", [503, 401])
def test_unhealthy_before_ready_recovers_within_the_grace(status: int) -> None:
    """A 503 (or a 401 while a key is being fixed) that clears within the grace is not fatal."""
    seen: list[str] = []
    with ScriptedServer() as server:
        health = (503, "") if status == 503 else (200, "")
        models = (401, "{}") if status == 401 else (200, models_body(MODEL))
        server.routes = {("GET", "/health"): health, ("GET", "/v1/models"): models}

        def tick(state) -> None:
            seen.append(state.stage)
            if len(seen) == 3:
                server.routes = {
                    ("GET", "/health"): (200, ""),
                    ("GET", "/v1/models"): (200, models_body(MODEL)),
                }

        wait_ready(server.url, "vllm", MODEL, on_tick=tick, unhealthy_grace_s=20, timeout_s=20)
    assert seen == ["unhealthy"] * 3 + ["ready"]


@pytest.mark.parametrize(
    ("routes", "text"),
    [
        ({"/health": (503, ""), "/v1/models": (200, models_body(MODEL))}, "503"),
        ({"/health": (200, ""), "/v1/models": (401, "{}")}, "401"),
        ({"/health": (200, ""), "/v1/models": (200, models_body("other"))}, "'other'"),
    ],
    ids=["503", "401", "wrong-model"],
)
def test_unhealthy_for_longer_than_the_grace_fails(routes: dict, text: str) -> None:
    grace = 0.4
    with ScriptedServer() as server:
        server.routes = {("GET", path): reply for path, reply in routes.items()}
        start = time.monotonic()
        with pytest.raises(EndpointUnhealthy) as info:
            wait_ready(server.url, "vllm", MODEL, unhealthy_grace_s=grace, timeout_s=30)
        elapsed = time.monotonic() - start
    assert "answers but is not serving" in str(info.value)
    assert text in str(info.value)
    assert grace <= elapsed < grace + 10


def test_grace_restarts_when_the_server_goes_back_to_starting() -> None:
    """unhealthy, starting, unhealthy...: only an unbroken unhealthy stretch counts."""
    seen: list[str] = []
    with ScriptedServer() as server:
        dead = {("GET", "/health"): (503, "")}
        loading = {("GET", "/health"): (500, "")}
        server.routes = dict(dead)
        unhealthy_at: list[float] = []

        def tick(state) -> None:
            seen.append(state.stage)
            if state.stage == "unhealthy":
                unhealthy_at.append(time.monotonic())
            # Flip to "starting" once just before the grace runs out, then back to dead.
            if len(unhealthy_at) >= 1 and time.monotonic() - unhealthy_at[0] > 0.25:
                if "starting" not in seen:
                    server.routes = dict(loading)
                else:
                    server.routes = dict(dead)

        start = time.monotonic()
        with pytest.raises(EndpointUnhealthy):
            wait_ready(server.url, "vllm", MODEL, on_tick=tick, unhealthy_grace_s=0.4, timeout_s=30)
        elapsed = time.monotonic() - start
    # The first stretch (> 0.25 s) plus a fresh, full 0.4 s one.
    assert "starting" in seen
    assert elapsed >= 0.25 + 0.4


@pytest.mark.parametrize(
    ("listening", "routes", "stage"),
    [
        (False, {}, "refused"),
        (True, {"/health": (200, "")}, "starting"),
        (True, {"/health": (404, "")}, "starting"),
    ],
    ids=["refused", "no-model-route", "health-404"],
)
def test_ready_timeout_is_enforced(listening: bool, routes: dict, stage: str) -> None:
    """--ready-timeout: never ready means a clear error soon after the limit, naming the stage."""
    limit = 0.5
    with ScriptedServer(listening=listening) as server:
        server.routes = {("GET", path): reply for path, reply in routes.items()}
        start = time.monotonic()
        with pytest.raises(EndpointUnhealthy) as info:
            wait_ready(server.url, "vllm", MODEL, timeout_s=limit)
        elapsed = time.monotonic() - start
    assert limit <= elapsed < limit + 5
    message = str(info.value)
    assert message.startswith("not ready after 0 s") or message.startswith("not ready after 1 s")
    assert f"({stage}:" in message
    assert "--ready-timeout" in (info.value.fix or "")


def test_no_timeout_waits_while_the_process_lives() -> None:
    """timeout_s=None: a long load is not a failure; the process dying is, at once."""
    ticks: list[str] = []
    with ScriptedServer(listening=False) as server, pytest.raises(EndpointUnhealthy) as info:
        wait_ready(
            server.url,
            "vllm",
            MODEL,
            alive=lambda: len(ticks) < 40,
            on_tick=lambda s: ticks.append(s.stage),
            timeout_s=None,
        )
    assert "exited before it was ready" in str(info.value)
    assert ticks == ["refused"] * 40


def test_dead_process_fails_before_any_probe() -> None:
    with ScriptedServer() as server:
        server.routes = {
            ("GET", "/health"): (200, ""),
            ("GET", "/v1/models"): (200, models_body(MODEL)),
        }
        with pytest.raises(EndpointUnhealthy, match="exited before it was ready"):
            wait_ready(server.url, "vllm", MODEL, alive=lambda: False, timeout_s=5)
    assert server.requests == []


def test_wait_sends_the_api_key() -> None:
    with ScriptedServer() as server:

        def models(_body: dict) -> tuple[int, str]:
            return (200, models_body(MODEL))

        server.routes = {("GET", "/health"): (200, ""), ("GET", "/v1/models"): models}
        seen_keys: list[str | None] = []
        original = server.httpd.RequestHandlerClass.do_GET

        def do_get(handler) -> None:
            seen_keys.append(handler.headers.get("Authorization"))
            original(handler)

        server.httpd.RequestHandlerClass.do_GET = do_get
        wait_ready(server.url, "vllm", MODEL, api_key="sk-test-key", timeout_s=10)
    assert seen_keys and set(seen_keys) == {"Bearer sk-test-key"}
