"""The fake ``vllm`` and ``ollama`` executables: argv checks by version, and what they serve."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from types import ModuleType

import openai
import pytest

from conftest import DATA_DIR, FAKES_DIR
from msmall.httpclient import new_client
from msmall.simulator.harness import EngineProcess

READY = "Application startup complete."
OLLAMA_READY = "Listening on"
MISTRAL_REPO = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
W4A16_REPO = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16"
TAG = "mistral-small3.1:24b-instruct-2503-q4_K_M"
# The flags msmall passes for the BF16 repo (FACTS.md), minus host/port/served name.
MISTRAL_FLAGS = [
    "--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral",
    "--tool-call-parser", "mistral", "--enable-auto-tool-choice", "--max-model-len", "32K",
    "--gpu-memory-utilization", "0.92", "--tensor-parallel-size", "1",
    "--limit-mm-per-prompt", '{"image":10}', "--kv-cache-dtype", "fp8", "--max-num-seqs", "8",
    "--mm-processor-cache-gb", "0", "--enable-log-requests",
]  # fmt: skip
WEATHER_TOOL = {
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


def run_fake(name: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAKES_DIR / name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def serve_fake(*argv: str, ready: str = READY) -> EngineProcess:
    engine = EngineProcess(argv).start()
    try:
        engine.wait_for_line(ready, timeout=15)
    except BaseException:
        engine.stop()
        raise
    return engine


def parses(*args: str, version: str | None = None, monkeypatch: pytest.MonkeyPatch) -> bool:
    """True when ``vllm serve`` accepts the flags, without starting a server.

    An out-of-range --gpu-memory-utilization, given last, fails only after a successful parse
    (exit 1); a parse error exits 2.
    """
    if version:
        monkeypatch.setenv("FAKE_VLLM_VERSION", version)
    result = run_fake("vllm", "serve", "some/model", *args, "--gpu-memory-utilization", "7")
    if result.returncode == 1:
        assert "GPU memory utilization must be within (0, 1]" in result.stderr
        return True
    assert result.returncode == 2, result.stderr
    return False


def pick_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_vllm_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_vllm", FAKES_DIR / "fake_vllm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fakes_are_executable() -> None:
    for name in ("vllm", "ollama"):
        assert os.access(FAKES_DIR / name, os.X_OK)


# vllm argv --------------------------------------------------------------------------------


def test_vllm_version(fakes_on_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_fake("vllm", "--version").stdout.strip() == "0.33.0"
    monkeypatch.setenv("FAKE_VLLM_VERSION", "0.9.1")
    assert run_fake("vllm", "--version").stdout.strip() == "0.9.1"


def test_vllm_unknown_flag_exits_2(fakes_on_path: Path) -> None:
    result = run_fake("vllm", "serve", MISTRAL_REPO, "--no-such-flag", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "usage: vllm serve [model_tag] [options]",
        "vllm serve: error: unrecognized arguments: --no-such-flag 1",
    ]


def test_vllm_without_model_fails_loudly(fakes_on_path: Path) -> None:
    result = run_fake("vllm", "serve", "--port", "1")
    assert result.returncode == 2
    assert "needs a model" in result.stderr and "Qwen/Qwen3-0.6B" in result.stderr


def test_vllm_limit_mm_old_format_fails_from_0_10(fakes_on_path: Path) -> None:
    result = run_fake("vllm", "serve", MISTRAL_REPO, "--limit-mm-per-prompt", "image=5")
    assert result.returncode == 2
    sample = (
        (DATA_DIR / "simulator" / "limit-mm-per-prompt-argparse-error.log").read_text().splitlines()
    )
    expected = [re.escape(line) for line in sample[1:]]
    expected[-1] = expected[-1].replace("0x7f4b777cfc70", "0x[0-9a-f]+")  # an address
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected)
    for pattern, line in zip(expected, lines, strict=True):
        assert re.fullmatch(pattern, line), line
    assert "Automatically detected platform cuda." in result.stdout  # the sample's first line


def test_vllm_flags_by_version(fakes_on_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parses("--limit-mm-per-prompt", '{"image": 10}', monkeypatch=monkeypatch)
    assert parses("--limit-mm-per-prompt.image", "10", monkeypatch=monkeypatch)
    assert not parses("--disable-mm-preprocessor-cache", monkeypatch=monkeypatch)
    assert parses("--max_model_len", "32k", "--gpu_memory_utilization=0.9", monkeypatch=monkeypatch)
    assert parses(*MISTRAL_FLAGS[:-5], "--served-model-name", "a", "b", monkeypatch=monkeypatch)
    assert not parses("--max-model", "4096", monkeypatch=monkeypatch)  # no abbreviations
    assert not parses("--max-model-len", "lots", monkeypatch=monkeypatch)
    assert parses("--limit-mm-per-prompt", "image=5", "--disable-mm-preprocessor-cache", version="0.9.1",
                  monkeypatch=monkeypatch)  # fmt: skip
    assert not parses("--enable-log-requests", version="0.9.1", monkeypatch=monkeypatch)


def test_vllm_post_parse_errors(fakes_on_path: Path) -> None:
    no_parser = run_fake("vllm", "serve", MISTRAL_REPO, "--enable-auto-tool-choice")
    assert no_parser.returncode == 1
    assert no_parser.stderr.splitlines()[-1] == (
        "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser"
    )
    unknown = run_fake("vllm", "serve", MISTRAL_REPO, "--tool-call-parser", "nope")
    assert unknown.returncode == 1 and "invalid tool call parser: nope" in unknown.stderr
    hf_only = run_fake("vllm", "serve", W4A16_REPO, "--load-format", "mistral")
    assert hf_only.returncode == 1
    assert f"Cannot find any model weights with `{W4A16_REPO}`" in hf_only.stderr


def test_max_model_len_spellings(fake_vllm_module: ModuleType) -> None:
    parse = fake_vllm_module.human_readable_int_or_auto
    assert (parse("32k"), parse("32K"), parse("25.6k"), parse("auto"), parse("-1")) == (
        32000,
        32768,
        25600,
        -1,
        -1,
    )


def test_vllm_fail_env_reaches_the_simulator(
    fakes_on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_FAIL", "oom-on-load")
    result = run_fake("vllm", "serve", MISTRAL_REPO, "--max-model-len", "4096", "--port", "0")
    assert result.returncode == 1
    assert "CUDA out of memory" in result.stdout


# vllm serving -----------------------------------------------------------------------------


def test_vllm_serves_with_msmall_flags(
    fakes_on_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-fake")
    engine = serve_fake(
        "vllm", "serve", MISTRAL_REPO, *MISTRAL_FLAGS,
        "--served-model-name", "mistral-small-3.1", "--host", "127.0.0.1", "--port", str(free_port),
    )  # fmt: skip
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{free_port}/v1", api_key="sk-fake",
                            max_retries=0, http_client=new_client(f"http://127.0.0.1:{free_port}/v1"))  # fmt: skip
        (model,) = api.models.list().data
        assert (model.id, model.max_model_len) == ("mistral-small-3.1", 32768)  # type: ignore[attr-defined]
        reply = api.chat.completions.create(
            model="mistral-small-3.1",
            messages=[{"role": "user", "content": "Weather in Lisbon?"}],
            tools=[WEATHER_TOOL],
        )
        (call,) = reply.choices[0].message.tool_calls
        assert json.loads(call.function.arguments) == {"city": "Lisbon"}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{free_port}/v1", api_key="x", max_retries=0,
                          http_client=new_client(f"http://127.0.0.1:{free_port}/v1")).models.list()  # fmt: skip
    finally:
        assert engine.stop() == 0
    assert "sk-fake" not in engine.output


def test_vllm_without_tool_flags(fakes_on_path: Path, free_port: int) -> None:
    """Mistral tokenizer: raw [TOOL_CALLS] text; HF tokenizer (quantized repo): 400."""
    engine = serve_fake(
        "vllm", "serve", MISTRAL_REPO, "--tokenizer-mode", "mistral", "--max-model-len", "8192",
        "--limit-mm-per-prompt", '{"image":0}', "--host", "127.0.0.1", "--port", str(free_port),
    )  # fmt: skip
    try:
        with new_client(f"http://127.0.0.1:{free_port}") as http:
            body = {"model": MISTRAL_REPO, "messages": [{"role": "user", "content": "Weather?"}]}
            text = http.post("/v1/chat/completions", json={**body, "tools": [WEATHER_TOOL]}).json()
            image = http.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})  # fmt: skip
    finally:
        engine.stop()
    message = text["choices"][0]["message"]
    assert message["content"].startswith("[TOOL_CALLS][") and "tool_calls" not in message
    assert image.status_code == 400
    assert image.json()["error"]["message"] == "At most 0 image(s) may be provided in one prompt."

    port = pick_port()
    hf = serve_fake(
        "vllm",
        "serve",
        W4A16_REPO,
        "--max-model-len",
        "8k",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    )
    try:
        with new_client(f"http://127.0.0.1:{port}") as http:
            refused = http.post("/v1/chat/completions", json={
                "model": W4A16_REPO, "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER_TOOL]})  # fmt: skip
    finally:
        hf.stop()
    assert refused.status_code == 400
    assert "--enable-auto-tool-choice and --tool-call-parser" in refused.json()["error"]["message"]


# ollama -----------------------------------------------------------------------------------


def test_ollama_cli_without_server(
    fakes_on_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port}")
    version = run_fake("ollama", "--version")
    assert version.returncode == 0
    assert version.stdout.splitlines() == [
        "Warning: could not connect to a running Ollama instance",
        "Warning: client version is 0.33.0",
    ]
    unknown = run_fake("ollama", "launch")
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[0] == 'Error: unknown command "launch" for "ollama"'
    pull = run_fake("ollama", "pull", TAG)
    assert pull.returncode == 1 and "could not connect to ollama server" in pull.stderr


def test_ollama_serve_pull_ps(
    fakes_on_path: Path, free_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port}")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("FAKE_OLLAMA_FAIL", "cpu-offload")
    engine = serve_fake("ollama", "serve", ready=OLLAMA_READY)
    try:
        assert run_fake("ollama", "--version").stdout.strip() == "ollama version is 0.33.0"
        pull = run_fake("ollama", "pull", TAG)
        assert pull.returncode == 0, pull.stderr
        assert pull.stdout.splitlines()[0] == "pulling manifest"
        assert pull.stdout.splitlines()[-1] == "success"
        assert TAG in run_fake("ollama", "list").stdout
        missing = run_fake("ollama", "pull", "llama3.2:404b")
        assert (missing.returncode, missing.stderr.strip()) == (
            1,
            "Error: pull model manifest: file does not exist",
        )
        with new_client(f"http://127.0.0.1:{free_port}") as http:
            http.post("/api/generate", json={"model": TAG, "keep_alive": -1}).raise_for_status()
        ps = run_fake("ollama", "ps").stdout
        assert re.search(r"\d+%/\d+% CPU/GPU", ps)
    finally:
        assert engine.stop() == 0
    manifest = (
        tmp_path / "models" / "manifests" / "registry.ollama.ai" / "library" / "mistral-small3.1"
    )
    assert (manifest / "24b-instruct-2503-q4_K_M").is_file()
