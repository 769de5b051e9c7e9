"""One case per diagnosis rule: a real log line in, the figures of that line in the cause sentence.

Logs come from tests/data/logs (sources in its README.md). Where no public log was found, the
line is the message as the engine's source formats it, with the file and function named; those
cases say `source:` instead of a file name. A rule added to diagnose.py without a case here
fails test_every_rule_kind_has_a_case.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall import backends
from msmall.backends import diagnose_log as diagnose


def _rules(backend: str) -> tuple:
    """The rules, in order, that diagnose a log of this backend (its engine's, shared ones first)."""
    return backends.resolve(backend)[0].log_rules.diagnosis


# Every rule of every engine (the shared ones appear in each engine's list once).
_RULES = list({id(r): r for b in ("vllm", "ollama") for r in _rules(b)}.values())

LOGS = Path(__file__).parents[1] / "data" / "logs"


def _file(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


# (case id, log text, backend, kind, texts the cause must contain, texts the fix must contain)
CASES = [
    ("no-gpu-runtime", _file("docker/run-could-not-select-device-driver.txt"), "docker",
     "no-gpu-runtime", ["no device driver for --gpus"], ["nvidia-ctk runtime configure"]),
    ("no-gpu-runtime-named", _file("docker/compose-could-not-select-device-driver-nvidia.txt"),
     "docker", "no-gpu-runtime", ['no "nvidia" device driver'], ["NVIDIA Container Toolkit"]),
    ("nvml-missing", _file("docker/run-gpus-nvml-missing.txt"), "docker", "nvml-missing",
     ["libnvidia-ml.so.1"], ["nvidia-smi"]),
    ("cuda-condition", _file("docker/run-unsatisfied-condition-cuda-12.8.txt"), "docker",
     "cuda-driver-too-old", ["CUDA 12.8 or newer"], ["v0.33.0-cu129"]),
    # source: CUDA runtime error string for cudaErrorSystemDriverMismatch (803), as torch's
    # torch/cuda/__init__.py `_lazy_init` re-raises it.
    ("cuda-error-803",
     "RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions "
     "before calling NumCudaDevices() that might have already set an error? Error 803: system "
     "has unsupported display driver / cuda driver combination", "vllm",
     "cuda-driver-too-old", ["CUDA error 803"], ["Update the NVIDIA driver"]),
    ("torch-driver-old", _file("vllm/torch-driver-too-old-11040.txt"), "vllm",
     "cuda-driver-too-old", ["supports CUDA 11.4"], ["R580+"]),
    ("port-uvicorn", _file("vllm/port-in-use-bind-on-address.txt"), "vllm", "port-in-use",
     ["port 8000 is already in use"], ["--port 8001"]),
    ("port-errno98", _file("vllm/port-in-use-errno98-v0.6.log"), "vllm", "port-in-use",
     ["the port is already in use"], ["--port N"]),
    # source: Go's net.Listen error as `ollama serve` prints it (cmd/cmd.go RunServer).
    ("port-ollama", "Error: listen tcp 127.0.0.1:11434: bind: address already in use", "ollama",
     "port-in-use", ["port 11434 is already in use"], ["--port 11435"]),
    ("hf-gated", _file("vllm/hf-gated-repo-oserror.txt"), "vllm", "hf-gated",
     ["gated", "token"], ["HF_TOKEN", "licence"]),
    ("limit-mm-old-form", _file("vllm/limit-mm-per-prompt-argparse-error.log"), "vllm",
     "limit-mm-format", ["'image=5'", "0.10 and newer"], ["--vllm-version"]),
    # source: argparse `_get_values` ("invalid %(type)s value: %(value)r") with vLLM 0.9's
    # `--limit-mm-per-prompt` type (a key=value parser) given the 0.10+ JSON.
    ("limit-mm-json-on-old",
     "vllm serve: error: argument --limit-mm-per-prompt: invalid loads value: '{\"image\":4}'",
     "vllm", "limit-mm-format", ['the JSON {"image":4}', "older than 0.10"], ["--vllm-version"]),
    ("unknown-argument", _file("vllm/unrecognized-arguments.txt"), "vllm", "unknown-argument",
     ["does not know --omni"], ["Remove --omni"]),
    # source: argparse `_get_values` with type=float.
    ("invalid-argument",
     "vllm serve: error: argument --gpu-memory-utilization: invalid float value: 'high'", "vllm",
     "invalid-argument", ["--gpu-memory-utilization", "invalid float value: 'high'"],
     ["msmall serve --dry-run"]),
    ("vllm-too-old", _file("vllm/architecture-not-supported-mistral.txt"), "vllm",
     "vllm-too-old", ["['MistralForCausalLM']", "vLLM 0.8 or newer"], ["pip install -U vllm"]),
    # source: vllm/transformers_utils/tokenizers/mistral.py `find_tokenizer_file`.
    ("tokenizer-format",
     "OSError: Found 0 files matching the pattern: `^tekken\\.json$|^tokenizer\\.model\\.v.*$`. "
     "Make sure that a Mistral tokenizer is present in ['config.json', 'model.safetensors'].",
     "vllm", "tokenizer-format", ["--tokenizer-mode mistral", "tekken.json"],
     ["--set hf_format=hf"]),
    # source: vllm/model_executor/model_loader/default_loader.py `_prepare_weights`.
    ("weights-format",
     "RuntimeError: Cannot find any model weights with "
     "`RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16`", "vllm", "weights-format",
     ["no weights in the format"], ["--set hf_format=hf"]),
    ("max-len-too-long", _file("vllm/max-model-len-greater-than-derived.txt"), "vllm",
     "max-len-too-long", ["131,072", "8,192 tokens"], ["--set max_model_len=8192"]),
    ("free-memory", _file("vllm/free-memory-less-than-desired-v0.9.1.log"), "vllm",
     "free-memory", ["Only 31.44 of 47.38 GiB is free", "wants 45.01 GiB",
                     "gpu_memory_utilization 0.95"], ["--set gpu_memory_utilization=0.65"]),
    ("free-memory-device", _file("vllm/free-memory-cuda1-multi-gpu.log"), "vllm", "free-memory",
     ["on cuda:1"], ["gpu_memory_utilization"]),
    ("kv-too-small", _file("vllm/max-seq-len-kv-cache-too-small.log"), "vllm",
     "kv-cache-too-small", ["262,144", "36 GiB", "6.94 GiB"],
     ["--set max_model_len=50512", "kv_cache_dtype=fp8"]),
    # source: vllm/worker/worker.py `raise_if_cache_size_invalid` (V0 engine, up to 0.7).
    ("kv-too-small-v0",
     "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens "
     "that can be stored in KV cache (20464). Try increasing `gpu_memory_utilization` or "
     "decreasing `max_model_len` when initializing the engine.", "vllm", "kv-cache-too-small",
     ["32,768", "20,464 tokens"], ["--set max_model_len=20224"]),
    ("no-cache-blocks", _file("vllm/no-cache-blocks-v0.6.log"), "vllm", "no-cache-blocks",
     ["no GPU memory is left for the KV cache"], ["gpu_memory_utilization=0.95"]),
    ("oom-loading", _file("vllm/oom-during-load-v0.11.log"), "vllm", "oom-loading",
     ["allocating 0.88 GiB more failed", "0.72 of 93.09 GiB was free"],
     ["--set tensor_parallel_size=2"]),
    # Two real lines joined: the weights line of one v0.8 log, then torch's OOM of another.
    ("oom-after-load",
     _file("vllm/model-loading-took-then-enginecore-failed-v0.8.log").splitlines()[1] + "\n"
     + _file("vllm/cuda-oom-old-torch-message.txt"), "vllm", "oom-after-load",
     ["after the weights (18.14 GiB)", "allocating 0.22 GiB more failed", "0.05 of 10.73 GiB"],
     ["gpu_memory_utilization=0.85"]),
    ("ollama-not-found", _file("ollama/cli-pull-manifest-not-found.txt"), "ollama",
     "ollama-pull-not-found", ["no ollama/llama3.2:3b"], ["mistral-small3.1:24b"]),
    ("ollama-too-old", _file("ollama/cli-pull-manifest-412-newer-version.txt"), "ollama",
     "ollama-too-old", ["HTTP 412"], ["0.6.5 or newer"]),
    ("ollama-ram", _file("ollama/cli-model-requires-more-system-memory.txt"), "ollama",
     "ollama-ram", ["164.8 GiB", "only 13.4 GiB"], ["--set max_model_len=8192"]),
    ("ollama-oom", _file("ollama/server-log-rocm-oom-after-load.log"), "ollama", "ollama-oom",
     ["after the model loaded"], ["OLLAMA_CONTEXT_LENGTH"]),
    ("nccl", _file("vllm/nccl-unhandled-cuda-error-ray.log"), "vllm", "nccl-error",
     ["NCCL", "peer-to-peer"], ["NCCL_P2P_DISABLE=1"]),
    ("engine-init-failed", _file("vllm/model-loading-took-then-enginecore-failed-v0.8.log"),
     "vllm", "engine-init-failed", ["last step reached: compiling the model"], ["msmall logs"]),
    # source: ollama llm/server.go (`llama runner process has terminated: %v`), exit status 2.
    ("ollama-runner-died", "Error: llama runner process has terminated: exit status 2", "ollama",
     "ollama-runner-died", ["exited: exit status 2."], ["--set max_model_len=8192"]),
    ("tool-parser", _file("vllm/mistral-tool-parser-streaming-error.log"), "vllm",
     "tool-parser-error", ["[TOOL_CALLS]"], ["--tool-call-parser mistral"]),
    ("tool-choice-off", _file("vllm/tool-choice-auto-requires-flags.txt"), "vllm",
     "tool-choice-disabled", ["without tool parsing"], ["--set tools=true"]),
    ("ollama-offload", _file("ollama/server-log-llama-runner-offloaded-30-of-81.log"), "ollama",
     "ollama-cpu-offload", ["Only 30 of 81 layers", "other 51 on the CPU"],
     ["--set max_model_len=8192"]),
]  # fmt: skip

NON_FATAL = {"tool-parser-error", "tool-choice-disabled", "ollama-cpu-offload"}


@pytest.mark.parametrize(
    ("text", "backend", "kind", "cause_parts", "fix_parts"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rule(text: str, backend: str, kind: str, cause_parts: list[str], fix_parts: list[str]):
    found = diagnose(text, backend)
    assert found is not None, "no rule matched"
    assert found.kind == kind, found
    for part in cause_parts:
        assert part in found.cause, (part, found.cause)
    for part in fix_parts:
        assert part in found.fix, (part, found.fix)
    assert found.fatal is (kind not in NON_FATAL)
    # One sentence each, ending like one.
    assert found.cause.rstrip().endswith("."), found.cause
    assert found.fix.rstrip().endswith("."), found.fix


def test_every_rule_kind_has_a_case() -> None:
    kinds = {rule.kind for rule in _RULES} | {"oom-after-load"}
    covered = {c[3] for c in CASES}
    assert kinds <= covered, f"rules without a case: {sorted(kinds - covered)}"
    # And every rule entry (several share a kind) is reached by at least one case.
    reached = set()
    for _, text, backend, *_ in CASES:
        for rule in _rules(backend):
            if rule.pattern.search(text):
                reached.add(id(rule))
                break
    missed = [r.kind for r in _RULES if id(r) not in reached]
    assert not missed, missed


@pytest.mark.parametrize("backend", ["ollama"])
def test_vllm_rules_do_not_fire_for_ollama(backend: str) -> None:
    """A vLLM message in an Ollama log is not diagnosed as a vLLM problem."""
    assert diagnose(_file("vllm/max-model-len-greater-than-derived.txt"), backend) is None
