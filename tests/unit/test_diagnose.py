"""diagnose.py against real engine logs (tests/data/logs, sources in its README.md) and against
messages written exactly as the engines' sources format them."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall.backends import diagnose_log as diagnose
from msmall.backends import log_activity as engine_activity
from msmall.backends.ollama.logs import parse_ollama_offload
from msmall.backends.vllm.logs import parse_kv_cache
from msmall.diagnose import Diagnosis, clean_lines

LOGS = Path(__file__).parents[1] / "data" / "logs"
BACKEND_OF_DIR = {"vllm": "vllm", "ollama": "ollama", "docker": "docker"}

# file -> (kind or None, figures the diagnosis must carry, text the fix must contain)
EXPECTED: dict[str, tuple[str | None, dict, tuple[str, ...]]] = {
    # vLLM failures
    "vllm/cuda-oom-old-torch-message.txt": (
        "oom-loading",
        {"tried_gib": 0.22, "total_gib": 10.73, "free_gib": 0.05, "gpu": 0},
        ("--profile 4090-q4", "--set tensor_parallel_size=2"),
    ),
    "vllm/engine-core-init-failed-apiserver.log": (
        "engine-init-failed",
        {"failed_procs": "{}"},
        ("msmall logs",),
    ),
    "vllm/engine-core-init-failed-message-engine0.txt": (
        "engine-init-failed",
        {"failed_procs": "{'EngineCore_0': 1}"},
        ("msmall logs",),
    ),
    "vllm/free-memory-cuda0-ci-with-ansi-caret-notation.log": (
        "free-memory",
        {
            "device": "cuda:0",
            "free_gib": 1.53,
            "total_gib": 22.05,
            "gpu_memory_utilization": 0.9,
            "desired_gib": 19.84,
        },
        ("nvidia-smi",),
    ),
    "vllm/free-memory-cuda1-multi-gpu.log": (
        "free-memory",
        {
            "device": "cuda:1",
            "free_gib": 19.77,
            "total_gib": 22.05,
            "desired_gib": 19.84,
            "suggested_gpu_memory_utilization": 0.88,
        },
        ("--set gpu_memory_utilization=0.88",),
    ),
    "vllm/free-memory-less-than-desired-dp0.log": (
        "free-memory",
        {"free_gib": 3.22, "total_gib": 4.0, "gpu_memory_utilization": 0.9, "desired_gib": 3.6},
        ("--set gpu_memory_utilization=0.79",),
    ),
    "vllm/free-memory-less-than-desired-v0.10-engine0.log": (
        "free-memory",
        {"free_gib": 7.34, "total_gib": 139.72, "desired_gib": 125.75},
        ("nvidia-smi",),
    ),
    "vllm/free-memory-less-than-desired-v0.9.1.log": (
        "free-memory",
        {
            "free_gib": 31.44,
            "total_gib": 47.38,
            "gpu_memory_utilization": 0.95,
            "desired_gib": 45.01,
        },
        ("--set gpu_memory_utilization=0.65",),
    ),
    "vllm/limit-mm-per-prompt-argparse-error.log": (
        "limit-mm-format",
        {"value": "image=5"},
        ("--vllm-version",),
    ),
    "vllm/max-seq-len-kv-cache-too-small-terminal-wrapped.log": (
        "kv-cache-too-small",
        {
            "max_model_len": 100000,
            "needed_gib": 4.26,
            "available_gib": 4.25,
            "suggested_max_len": 99584,
        },
        ("--set max_model_len=99584",),
    ),
    "vllm/max-seq-len-kv-cache-too-small.log": (
        "kv-cache-too-small",
        {
            "max_model_len": 262144,
            "needed_gib": 36.0,
            "available_gib": 6.94,
            "estimated_max_len": 50512,
        },
        ("--set max_model_len=50512",),
    ),
    "vllm/mistral-tool-parser-streaming-error.log": (
        "tool-parser-error",
        {},
        ("--tool-call-parser mistral",),
    ),
    "vllm/mistral3.1-awq-24gb-kv-then-crash-v0.8.log": (
        "engine-init-failed",
        {"kv_cache_tokens": 35392},
        ("msmall logs",),
    ),
    "vllm/model-loading-took-then-enginecore-failed-v0.8.log": (
        "engine-init-failed",
        {"weights_gib": 18.14},
        ("msmall logs",),
    ),
    "vllm/oom-during-load-v0.11.log": (
        "oom-loading",
        {"tried_gib": 0.88, "total_gib": 93.09, "free_gib": 0.72},
        ("--profile 2x4090-fp8-vision",),
    ),
    # vLLM logs of healthy servers
    "vllm/runtime-metrics-docker-timestamps.log": (None, {}, ()),
    "vllm/startup-banner-v0.23.log": (None, {}, ()),
    "vllm/startup-kv-cache-lines-v0.10.1-engine0.log": (None, {}, ()),
    "vllm/startup-kv-cache-lines-v0.11-glm4v.log": (None, {}, ()),
    "vllm/startup-routes-2026-starting-vllm-server.log": (None, {}, ()),
    "vllm/startup-routes-ansi-caret-notation.log": (None, {}, ()),
    "vllm/startup-routes-v0.13-dev.log": (None, {}, ()),
    # Ollama
    "ollama/cli-pull-manifest-not-found.txt": (
        "ollama-pull-not-found",
        {"model": "ollama/llama3.2:3b"},
        ("mistral-small3.1:24b", "--set ollama_tag="),
    ),
    "ollama/cli-pull-progress.txt": (None, {}, ()),
    "ollama/server-log-inference-compute-rtx4090.log": (None, {}, ()),
    "ollama/server-log-llama-runner-offloaded-30-of-81.log": (
        "ollama-cpu-offload",
        {"layers_offloaded": 30, "layers_total": 81},
        ("--set max_model_len=8192",),
    ),
    "ollama/server-log-mistral-small3.1-0.6.6-rtx3090-journald.log": (None, {}, ()),
    "ollama/server-log-mistral-small3.1-offload-41-of-41.log": (None, {}, ()),
    "ollama/server-log-mistral-small3.1-q8-2gpu-debug.log": (None, {}, ()),
    "ollama/server-log-offload-line-wrapped-2gpu.txt": (
        "ollama-cpu-offload",
        {"layers_offloaded": 37, "layers_total": 49},
        ("--set max_model_len=8192",),
    ),
    "ollama/server-log-offload-line-wrapped-4gpu.txt": (
        "ollama-cpu-offload",
        {"layers_offloaded": 44, "layers_total": 81},
        ("--set max_model_len=8192",),
    ),
    "ollama/server-log-rocm-oom-after-load.log": (
        "ollama-oom",
        {},
        ("--set max_model_len=8192",),
    ),
    # Docker
    "docker/api-http500-could-not-select-device-driver.txt": (
        "no-gpu-runtime",
        {"driver": ""},
        ("NVIDIA Container Toolkit", "nvidia-ctk runtime configure"),
    ),
    "docker/compose-could-not-select-device-driver-nvidia.txt": (
        "no-gpu-runtime",
        {"driver": "nvidia"},
        ("NVIDIA Container Toolkit",),
    ),
    "docker/run-could-not-select-device-driver.txt": (
        "no-gpu-runtime",
        {"driver": ""},
        ("NVIDIA Container Toolkit",),
    ),
    "docker/run-gpus-nvml-missing.txt": ("nvml-missing", {}, ("nvidia-smi",)),
    "docker/start-could-not-select-device-driver.txt": (
        "no-gpu-runtime",
        {"driver": ""},
        ("NVIDIA Container Toolkit",),
    ),
    # Added with tests/unit/test_diagnose_rules.py (one per rule kind; sources in the README).
    "docker/run-unsatisfied-condition-cuda-12.8.txt": (
        "cuda-driver-too-old",
        {"required_cuda": "12.8"},
        ("-cu129",),
    ),
    "vllm/hf-gated-repo-oserror.txt": ("hf-gated", {}, ("HF_TOKEN",)),
    "vllm/port-in-use-bind-on-address.txt": ("port-in-use", {"port": 8000}, ("--port 8001",)),
    "vllm/port-in-use-errno98-v0.6.log": ("port-in-use", {}, ("--port N",)),
    "vllm/max-model-len-greater-than-derived.txt": (
        "max-len-too-long",
        {"max_model_len": 131072, "model_max_len": 8192},
        ("--set max_model_len=8192",),
    ),
    "vllm/no-cache-blocks-v0.6.log": ("no-cache-blocks", {}, ("gpu_memory_utilization=0.95",)),
    "vllm/tool-choice-auto-requires-flags.txt": ("tool-choice-disabled", {}, ("--set tools=true",)),
    "vllm/nccl-unhandled-cuda-error-ray.log": ("nccl-error", {}, ("NCCL_P2P_DISABLE=1",)),
    "vllm/architecture-not-supported-mistral.txt": (
        "vllm-too-old",
        {"architecture": "['MistralForCausalLM']"},
        ("pip install -U vllm",),
    ),
    "vllm/unrecognized-arguments.txt": ("unknown-argument", {"arguments": "--omni"}, ("--omni",)),
    "vllm/torch-driver-too-old-11040.txt": (
        "cuda-driver-too-old",
        {"driver_cuda": "11.4"},
        ("Update the NVIDIA driver",),
    ),
    "ollama/cli-model-requires-more-system-memory.txt": (
        "ollama-ram",
        {"required_gib": 164.8, "available_gib": 13.4},
        ("--set max_model_len=8192",),
    ),
    "ollama/cli-pull-manifest-412-newer-version.txt": ("ollama-too-old", {}, ("0.6.5",)),
    # Added with tests/unit/test_diagnose_more.py (round 3 of the mutation audit).
    "vllm/cuda-oom-kib-old-torch-message.txt": (
        "oom-loading",
        {"tried_gib": 0.0, "total_gib": 11.17, "free_gib": 0.0, "gpu": 0},
        ("--set tensor_parallel_size=2",),
    ),
    "vllm/cuda-oom-torch-2.1-capacty-typo.txt": (
        "oom-loading",
        {"tried_gib": 55.57, "total_gib": 12.0, "free_gib": 9.02, "gpu": 0},
        ("--set tensor_parallel_size=2",),
    ),
    # Cut before the error: nothing to diagnose yet.
    "vllm/loading-model-weights-took-gb-v0.7.log": (None, {}, ()),
}

NON_FATAL = {"tool-parser-error", "ollama-cpu-offload", "tool-choice-disabled"}


def _log(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def _samples() -> list[str]:
    return sorted(
        str(p.relative_to(LOGS)) for p in LOGS.glob("*/*") if p.is_file() and p.name != "README.md"
    )


def test_every_sample_has_an_expectation_and_a_source() -> None:
    readme = (LOGS / "README.md").read_text(encoding="utf-8")
    assert set(_samples()) == set(EXPECTED)
    for name in EXPECTED:
        assert f"| `{name}` |" in readme, f"{name} has no source row in tests/data/logs/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(name: str) -> None:
    kind, figures, fix_parts = EXPECTED[name]
    result = diagnose(_log(name), BACKEND_OF_DIR[name.split("/")[0]])
    if kind is None:
        assert result is None, result
        return
    assert isinstance(result, Diagnosis)
    assert result.kind == kind
    for key, value in figures.items():
        assert result.figures.get(key) == value, (key, result.figures)
    for part in fix_parts:
        assert part in result.fix
    assert result.fatal is (kind not in NON_FATAL)
    # Plain text: one sentence each, no colour codes or process prefixes left in the evidence.
    assert result.cause.endswith(".") and result.fix.endswith(".")
    assert result.evidence and "\x1b" not in result.evidence and "^[" not in result.evidence
    assert "pid=" not in result.evidence


# --- cleaning ---------------------------------------------------------------------------------

CARET_LINE = _log("vllm/free-memory-cuda0-ci-with-ansi-caret-notation.log").splitlines()[1]


def test_caret_notation_and_raw_ansi_give_the_same_diagnosis() -> None:
    assert "^[[0;36m" in CARET_LINE
    raw = CARET_LINE.replace("^[", "\x1b")
    caret, ansi = diagnose(CARET_LINE), diagnose(raw)
    assert caret is not None and caret == ansi
    assert caret.kind == "free-memory"
    assert caret.figures["free_gib"] == 1.54
    assert caret.evidence.startswith("ValueError: Free memory on device cuda:0 (1.54/22.05 GiB)")


def test_prefixes_are_stripped_in_any_combination() -> None:
    message = (
        "ValueError: Free memory on device cuda:0 (14.00/24.00 GiB) on startup is less than desired "
        "GPU memory utilization (0.92, 22.08 GiB). Decrease GPU memory utilization or reduce GPU "
        "memory used by other processes."
    )
    header = "ERROR 11-20 10:00:00 [core.py:935] "
    for prefix in (
        "",
        "(EngineCore_DP0 pid=972) " + header,
        "(EngineCore_0 pid=1810465) " + header,
        "(EngineCore pid=316) " + header,
        "2026-05-12T07:51:36.069569496Z (EngineCore pid=1) " + header,
        "[2026-01-28T23:59:42Z] (EngineCore_DP0 pid=972) " + header,
        "\x1b[0;36m(EngineCore_DP0 pid=738)\x1b[0;0m \x1b[31mERROR\x1b[0m 01-26 09:25:37 [core.py:935] ",
        "[multiproc_executor.py:492] ",
    ):
        result = diagnose(prefix + message)
        assert result is not None and result.kind == "free-memory", prefix
        assert result.evidence == message
        assert result.figures["suggested_gpu_memory_utilization"] == 0.57


def test_terminal_wrapped_lines_are_joined_before_matching() -> None:
    lines = clean_lines(_log("vllm/max-seq-len-kv-cache-too-small-terminal-wrapped.log"))
    assert lines[0].endswith('kv_cache_utils.py", line 2193, in get_kv_cache_configs')
    assert any("(4.26 GiB KV cache is needed, which is larger" in line for line in lines)


def test_unprefixed_lines_after_a_long_line_are_not_glued_to_it() -> None:
    # tqdm progress after a wide INFO line, as in the GLM-4V startup log.
    lines = clean_lines(_log("vllm/startup-kv-cache-lines-v0.11-glm4v.log"))
    assert any(line.startswith("Capturing CUDA graphs (decode, FULL)") for line in lines)
    assert lines[4].endswith("Maximum concurrency for 65,536 tokens per request: 6.49x")


def test_journald_and_logfmt_wraps() -> None:
    lines = clean_lines(_log("ollama/server-log-offload-line-wrapped-4gpu.txt"))
    assert len(lines) == 1
    assert "layers.model=81 layers.offload=44" in " ".join(lines[0].split())
    journald = clean_lines(_log("ollama/server-log-rocm-oom-after-load.log"))
    assert "CUDA error: out of memory" in journald


# --- which cause wins -------------------------------------------------------------------------

GENERIC = _log("vllm/engine-core-init-failed-message-engine0.txt")


def test_specific_cause_beats_the_generic_wrapper() -> None:
    combined = _log("vllm/max-seq-len-kv-cache-too-small.log") + GENERIC
    assert diagnose(combined).kind == "kv-cache-too-small"
    combined = _log("vllm/oom-during-load-v0.11.log") + GENERIC
    assert diagnose(combined).kind == "oom-loading"
    # The v0.9.1 log prints "EngineCore failed to start." after the free-memory error.
    assert "EngineCore failed to start" in _log("vllm/free-memory-less-than-desired-v0.9.1.log")


def test_generic_wrapper_alone_is_engine_init_failed() -> None:
    result = diagnose("RuntimeError: Engine core initialization failed. See root cause above.")
    assert result is not None and result.kind == "engine-init-failed"


def test_empty_and_noise_give_none() -> None:
    assert diagnose("") is None
    assert diagnose('INFO:     127.0.0.1:5000 - "GET /health HTTP/1.1" 200 OK\n') is None


def test_both_max_seq_len_spellings() -> None:
    # kv_cache_utils.py formats it; "models's" until late 2025, "model's" after.
    template = (
        "(EngineCore pid=1) ERROR 05-20 00:55:14 [core.py:1000] ValueError: To serve at least one "
        "request with the {who} max seq len (131072), (20.00 GiB KV cache is needed, which is larger "
        "than the available KV cache memory (5.31 GiB). Based on the available memory, the estimated "
        "maximum model length is 34768. Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine."
    )
    for who in ("models's", "model's"):
        result = diagnose(template.format(who=who))
        assert result is not None and result.kind == "kv-cache-too-small"
        assert result.figures["estimated_max_len"] == 34768
        assert "--set max_model_len=34768" in result.fix


def test_kv_cache_too_small_v0_engine_message() -> None:
    result = diagnose(
        "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens "
        "that can be stored in KV cache (20464). Try increasing `gpu_memory_utilization` or "
        "decreasing `max_model_len` when initializing the engine."
    )
    assert result is not None and result.kind == "kv-cache-too-small"
    assert result.figures == {
        "max_model_len": 32768,
        "kv_cache_tokens": 20464,
        "suggested_max_len": 20224,
    }


# --- messages as the engines write them (no public capture in the sample set) -----------------


def test_unrecognized_argument_from_argparse() -> None:
    log = "usage: vllm serve [model_tag] [options]\nvllm serve: error: unrecognized arguments: --foo\n"
    result = diagnose(log)
    assert result is not None and result.kind == "unknown-argument"
    assert result.figures == {"arguments": "--foo"}
    assert "--vllm-version" in result.fix and "--foo" in result.fix
    assert result.evidence == "vllm serve: error: unrecognized arguments: --foo"


def test_no_cache_blocks_with_figures() -> None:
    log = (
        "(EngineCore_DP0 pid=5) INFO 01-01 00:00:00 [gpu_model_runner.py:2000] Model loading took "
        "44.52 GiB memory and 60.1 seconds\n"
        "(EngineCore_DP0 pid=5) INFO 01-01 00:00:10 [gpu_worker.py:300] Available KV cache memory: "
        "-0.3 GiB\n"
        "(EngineCore_DP0 pid=5) ERROR 01-01 00:00:10 [core.py:700] ValueError: No available memory "
        "for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.\n"
        + GENERIC
    )
    result = diagnose(log)
    assert result is not None and result.kind == "no-cache-blocks"
    assert result.figures == {"weights_gib": 44.52, "available_gib": -0.3}
    assert "--profile 2x4090-fp8-vision" in result.fix


def test_failed_to_load_model_message_of_newer_vllm() -> None:
    # gpu_model_runner.py wraps the torch OOM raised while loading weights.
    log = (
        "(EngineCore pid=36704) ERROR 04-07 15:58:28 [gpu_model_runner.py:4818] Failed to load model "
        "- not enough GPU memory. Try lowering --gpu-memory-utilization to free memory for weights, "
        "increasing --tensor-parallel-size, or using --quantization. (original error: CUDA out of "
        "memory. Tried to allocate 112.00 MiB. GPU 0 has a total capacity of 23.52 GiB of which "
        "53.06 MiB is free.)"
    )
    result = diagnose(log, "docker")
    assert result is not None and result.kind == "oom-loading"
    assert result.figures == {"tried_gib": 0.11, "total_gib": 23.52, "free_gib": 0.05, "gpu": 0}


def test_oom_after_the_weights_loaded() -> None:
    log = (
        "INFO 05-23 09:31:24 [gpu_model_runner.py:1347] Model loading took 13.8 GiB and 40.7 seconds\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a total "
        "capacity of 23.54 GiB of which 612.00 MiB is free."
    )
    result = diagnose(log)
    assert result is not None and result.kind == "oom-after-load"
    assert result.figures["weights_gib"] == 13.8
    assert "--set gpu_memory_utilization=0.85" in result.fix


@pytest.mark.parametrize(
    "line",
    [
        "RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions "
        "before calling NumCudaDevices() that might have already set an error? Error 803: system has "
        "unsupported display driver / cuda driver combination",
        "Error 804: forward compatibility was attempted on non supported HW",
        "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.9, please update "
        "your driver to a newer version, or use an earlier cuda container: unknown.",
    ],
)
def test_driver_too_old_points_docker_at_the_cu129_image(line: str) -> None:
    result = diagnose(line, "docker")
    assert result is not None and result.kind == "cuda-driver-too-old"
    assert "-cu129" in result.fix
    assert "R580" in diagnose(line, "vllm").fix


def test_driver_condition_figures() -> None:
    result = diagnose("unsatisfied condition: cuda>=13.0 (cuda=12.6)", "docker")
    assert result.figures == {"required_cuda": "13.0", "driver_cuda": "12.6"}


def test_port_in_use() -> None:
    result = diagnose(
        "(APIServer pid=1) ERROR:    [Errno 98] error while attempting to bind on address "
        "('127.0.0.1', 8000): address already in use"
    )
    assert result.kind == "port-in-use" and result.figures == {"port": 8000}
    assert "--port 8001" in result.fix
    ollama = diagnose("Error: listen tcp 127.0.0.1:11434: bind: address already in use", "ollama")
    assert ollama.kind == "port-in-use" and ollama.figures == {"port": 11434}


def test_tokenizer_and_weights_format_on_hf_repos() -> None:
    tok = diagnose(
        "OSError: Found 0 files matching the pattern: `^tokenizer\\.model\\.v.*$|^tekken\\.json$`. "
        "Make sure that a Mistral tokenizer is present in ['config.json', 'tokenizer.json']."
    )
    assert tok.kind == "tokenizer-format" and "--set hf_format=hf" in tok.fix
    weights = diagnose(
        "RuntimeError: Cannot find any model weights with "
        "`RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-FP8-dynamic`"
    )
    assert weights.kind == "weights-format" and "--set hf_format=hf" in weights.fix


def test_ollama_messages() -> None:
    ram = diagnose(
        "Error: model requires more system memory (25.6 GiB) than is available (12.3 GiB)", "ollama"
    )
    assert ram.kind == "ollama-ram"
    assert ram.figures == {"required_gib": 25.6, "available_gib": 12.3}
    old = diagnose(
        "Error: pull model manifest: 412: The model you are attempting to pull requires a newer "
        "version of Ollama.",
        "ollama",
    )
    assert old.kind == "ollama-too-old" and "0.6.5" in old.fix
    oom = diagnose(
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2304.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "ollama",
    )
    assert oom.kind == "ollama-oom" and oom.figures == {"tried_gib": 2.25, "gpu": 0}


def test_backend_filters_engine_specific_rules() -> None:
    # An Ollama-only rule does not fire on a vLLM log and the other way round.
    assert diagnose(_log("ollama/server-log-llama-runner-offloaded-30-of-81.log"), "vllm") is None
    assert diagnose(_log("vllm/max-seq-len-kv-cache-too-small.log"), "ollama") is None
    # Docker daemon errors are found whatever backend was asked for.
    assert (
        diagnose(_log("docker/run-could-not-select-device-driver.txt"), "vllm").kind
        == "no-gpu-runtime"
    )


# --- activity while waiting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "backend", "expected"),
    [
        (
            "(EngineCore pid=316) INFO 11-20 10:00:00 [kv_cache_utils.py:1300] GPU KV cache size: "
            "39,120 tokens, Maximum concurrency for 32,768 tokens per request: 1.19x",
            "vllm",
            "KV cache: 39,120 tokens (1.19x concurrency at 32,768)",
        ),
        (
            "(EngineCore_0 pid=1399537) INFO 08-19 14:58:40 [kv_cache_utils.py:849] GPU KV cache "
            "size: 922,496 tokens",
            "vllm",
            "KV cache: 922,496 tokens",
        ),
        (
            "(EngineCore pid=9) INFO 11-20 10:00:00 [gpu_model_runner.py:2900] Model loading took "
            "14.25 GiB memory and 21.3 seconds",
            "vllm",
            "weights loaded: 14.25 GiB",
        ),
        (
            "INFO 05-23 09:31:24 [gpu_model_runner.py:1347] Model loading took 18.1450 GiB and "
            "40.766484 seconds",
            "vllm",
            "weights loaded: 18.14 GiB",
        ),
        (
            "(EngineCore pid=9) INFO 11-20 10:00:00 [gpu_model_runner.py:2800] Starting to load model "
            "mistralai/Mistral-Small-3.1-24B-Instruct-2503...",
            "vllm",
            "loading weights",
        ),
        (
            "Capturing CUDA graphs (decode, FULL): 100%|██████████| 67/67 [00:03<00:00, 20.1it/s]",
            "vllm",
            "capturing CUDA graphs",
        ),
        (
            "\x1b[0;36m(APIServer pid=31)\x1b[0;0m INFO 02-03 19:00:05 [api_server.py:946] Starting "
            "vLLM API server 0 on http://0.0.0.0:8000",
            "vllm",
            "API server starting on http://0.0.0.0:8000",
        ),
        (
            "2026-05-12T07:51:36.069569496Z (APIServer pid=1) INFO:     Application startup complete.",
            "docker",
            "ready",
        ),
        (
            "Apr 19 16:54:30 host ollama[1180]: llm_load_tensors: offloaded 41/41 layers to GPU",
            "ollama",
            "offloaded 41/41 layers to GPU",
        ),
        (
            "(EngineCore pid=9) INFO 11-20 10:00:00 [default_loader.py:300] Loading safetensors "
            "checkpoint shards:  50% Completed | 5/10 [00:05<00:05,  1.01s/it]",
            "vllm",
            "loading weights: 5/10 shards",
        ),
        ("pulling manifest", "ollama", "pulling manifest"),
        (
            'time=2025-06-05T17:54:30.379-05:00 level=INFO source=server.go:630 msg="llama runner '
            'started in 4.01 seconds"',
            "ollama",
            "runner started in 4.0 s",
        ),
    ],
)
def test_engine_activity(line: str, backend: str, expected: str) -> None:
    assert engine_activity(line, backend) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        '(APIServer pid=1) INFO:     172.17.0.1:53400 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "(APIServer pid=34165) INFO 05-06 21:00:52 [launcher.py:46] Route: /health, Methods: GET",
        "(EngineCore_DP0 pid=17374) ERROR 09-28 15:47:24 [core.py:718]     raise ValueError(",
    ],
)
def test_engine_activity_ignores_noise(line: str) -> None:
    assert engine_activity(line) is None


def test_activity_over_a_whole_startup_log() -> None:
    log = _log("vllm/startup-kv-cache-lines-v0.11-glm4v.log").splitlines()
    seen = [a for a in (engine_activity(line) for line in log) if a]
    assert "KV cache memory: 16.23 GiB" in seen
    assert "KV cache: 425,424 tokens" in seen
    assert "capturing CUDA graphs" in seen
    assert "CUDA graphs captured in 7 s (0.95 GiB)" in seen


# --- figures ----------------------------------------------------------------------------------


def test_parse_kv_cache_one_line_form() -> None:
    log = (
        "(EngineCore pid=316) INFO 11-20 10:00:00 [gpu_worker.py:400] Available KV cache memory: "
        "5.97 GiB\n"
        "(EngineCore pid=316) INFO 11-20 10:00:00 [kv_cache_utils.py:1300] GPU KV cache size: "
        "39,120 tokens, Maximum concurrency for 32,768 tokens per request: 1.19x\n"
    )
    assert parse_kv_cache(log) == {
        "tokens": 39120,
        "concurrency": 1.19,
        "max_len": 32768,
        "available_gib": 5.97,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vllm/startup-kv-cache-lines-v0.10.1-engine0.log",
            {"tokens": 922496, "concurrency": 23.06, "max_len": 40000, "available_gib": 112.61},
        ),
        (
            "vllm/startup-kv-cache-lines-v0.11-glm4v.log",
            {"tokens": 425424, "concurrency": 6.49, "max_len": 65536, "available_gib": 16.23},
        ),
        (
            "vllm/mistral3.1-awq-24gb-kv-then-crash-v0.8.log",
            {"tokens": 35392, "concurrency": 8.64, "max_len": 4096, "available_gib": None},
        ),
        ("vllm/startup-routes-v0.13-dev.log", None),
    ],
)
def test_parse_kv_cache_two_line_form(name: str, expected: dict | None) -> None:
    assert parse_kv_cache(_log(name)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ollama/server-log-mistral-small3.1-offload-41-of-41.log", (41, 41)),
        ("ollama/server-log-llama-runner-offloaded-30-of-81.log", (30, 81)),
        ("ollama/server-log-offload-line-wrapped-2gpu.txt", (37, 49)),
        ("ollama/server-log-offload-line-wrapped-4gpu.txt", (44, 81)),
        ("ollama/server-log-mistral-small3.1-q8-2gpu-debug.log", None),
    ],
)
def test_parse_ollama_offload(name: str, expected: tuple[int, int] | None) -> None:
    result = parse_ollama_offload(_log(name))
    if expected is None:
        assert result is None
    else:
        assert result == {"layers_offloaded": expected[0], "layers_total": expected[1]}


def test_parse_ollama_offload_new_engine_line() -> None:
    line = 'time=2025-09-01T10:00:00.000Z level=INFO source=ggml.go:400 msg="offloaded 41/41 layers to GPU"'
    assert parse_ollama_offload(line) == {"layers_offloaded": 41, "layers_total": 41}
