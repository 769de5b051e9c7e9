"""Diagnosis cases the mutation audit (round 3) found untested: boundaries of the advice figures,
units other than GiB, the cleaning of wrapped lines, and which of two reports wins.

Every log line is a real one from tests/data/logs (sources in its README.md). Where a boundary
needs a figure no public log shows, the real line is used with that one figure changed, and the
test says so; the wording, prefixes and every other figure stay as the engine printed them.
Each test also feeds a neighbouring line to show the rule does not fire on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall.backends import diagnose_log as diagnose
from msmall.backends import log_activity
from msmall.backends.ollama.logs import parse_ollama_offload
from msmall.diagnose import EVIDENCE_MAX, clean_lines

LOGS = Path(__file__).parents[1] / "data" / "logs"


def _log(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def _line(name: str, needle: str) -> str:
    """The one line of a sample that holds `needle`."""
    found = [line for line in _log(name).splitlines() if needle in line]
    assert len(found) == 1, (name, needle, found)
    return found[0]


# --- vLLM: the free-memory advice ------------------------------------------------------------

# vllm-project/vllm issue #25837 (EngineCore_DP0 prefix, a 4 GiB card).
DP0 = "vllm/free-memory-less-than-desired-dp0.log"
FREE_LINE = _line(DP0, "Free memory on device")
# pytorch/pytorch issue #175666: the same message naming the device, on a 22.05 GiB card.
CUDA1_LINE = _line("vllm/free-memory-cuda1-multi-gpu.log", "Free memory on device")


@pytest.mark.parametrize(
    ("free", "suggested"),
    [
        # 11.25 / 22.05 = 51.02 % -> floor 51 % -> one point of slack -> 0.50: still suggested.
        ("11.25", "0.50"),
        # 12 / 22.05 = 54.42 % -> 54 % -> 0.53.
        ("12.00", "0.53"),
    ],
)
def test_free_memory_suggests_a_utilisation_from_half_up(free: str, suggested: str) -> None:
    """The CUDA1 line with its free figure changed; the suggestion is floor(free/total) - 0.01."""
    line = CUDA1_LINE.replace("(19.77/22.05 GiB)", f"({free}/22.05 GiB)")
    result = diagnose(line)
    assert result is not None and result.kind == "free-memory"
    assert result.figures["suggested_gpu_memory_utilization"] == float(suggested)
    assert f"`--set gpu_memory_utilization={suggested}`" in result.fix
    assert f"Only {float(free):g} of 22.05 GiB is free on cuda:1" in result.cause
    assert "wants 19.84 GiB (gpu_memory_utilization 0.9)" in result.cause


def test_free_memory_under_half_says_stop_the_other_processes() -> None:
    """11 / 22.05 = 49.9 % -> 0.48, under the 0.5 floor: no utilisation is worth suggesting."""
    line = CUDA1_LINE.replace("(19.77/22.05 GiB)", "(11.0/22.05 GiB)")
    result = diagnose(line)
    assert result is not None and result.kind == "free-memory"
    assert "suggested_gpu_memory_utilization" not in result.figures
    assert "gpu_memory_utilization=" not in result.fix
    assert result.fix == (
        "Stop the other processes on cuda:1 (`nvidia-smi` lists them): with 11 GiB free the "
        "model cannot load."
    )


def test_free_memory_rule_ignores_the_lines_around_it() -> None:
    # The traceback line right above the ValueError in the same log names the check, not figures.
    lines = _log(DP0).splitlines()
    at = lines.index(FREE_LINE)
    assert diagnose(lines[at - 1]) is None
    assert diagnose(FREE_LINE).figures["suggested_gpu_memory_utilization"] == 0.79


# --- vLLM: the KV-cache advice ---------------------------------------------------------------

KV = "vllm/max-seq-len-kv-cache-too-small.log"
KV_LINE = _line(KV, "estimated maximum model length is 50512")


def test_kv_cache_estimate_of_256_tokens_is_still_suggested() -> None:
    """xorbitsai/inference #4926's line with vLLM's estimate changed to 256, msmall's floor."""
    result = diagnose(KV_LINE.replace("is 50512.", "is 256."))
    assert result is not None and result.kind == "kv-cache-too-small"
    assert result.figures["suggested_max_len"] == 256
    assert "`--set max_model_len=256` (the longest vLLM says fits)" in result.fix
    assert "at max_model_len 262,144 needs 36 GiB" in result.cause
    assert "only 6.94 GiB is left" in result.cause


def test_kv_cache_estimate_under_256_tokens_points_at_smaller_weights() -> None:
    result = diagnose(KV_LINE.replace("is 50512.", "is 255."))
    assert result is not None and result.kind == "kv-cache-too-small"
    assert "max_model_len=" not in result.fix
    assert result.fix.startswith("Almost nothing is left for the KV cache: use smaller weights:")
    assert "`--profile 4090-q4`" in result.fix


def test_kv_cache_rule_ignores_the_raise_line_above_it() -> None:
    lines = _log(KV).splitlines()
    raise_line = lines[lines.index(KV_LINE) - 1]
    assert raise_line.endswith("raise ValueError(")
    assert diagnose(raise_line) is None


# --- vLLM: OOM while loading vs after loading -------------------------------------------------

# vllm-project/vllm issue #18730 (v0.8): the worker that finished loading.
WEIGHTS_LINE = _line(
    "vllm/model-loading-took-then-enginecore-failed-v0.8.log", "Model loading took"
)
# vllm-project/vllm issue #28143 (v0.11): the load-time OOM, no "Failed to load model" wrapper.
V011_OOM = _line("vllm/oom-during-load-v0.11.log", "Failed to create unquantized linear weights")


def test_oom_creating_weights_is_a_load_failure_even_after_a_weights_line() -> None:
    """Two real lines joined: under tensor parallel one worker can report its weights loaded
    while another runs out of memory creating its share; that OOM names the weights."""
    result = diagnose(WEIGHTS_LINE + "\n" + V011_OOM)
    assert result is not None and result.kind == "oom-loading"
    assert result.cause == (
        "The GPU ran out of memory while loading the weights (allocating 0.88 GiB more failed; "
        "0.72 of 93.09 GiB was free)."
    )
    assert "--set tensor_parallel_size=2" in result.fix
    # The neighbour: torch's OOM without "weights" after the same line is after-load.
    after = diagnose(WEIGHTS_LINE + "\n" + _log("vllm/cuda-oom-old-torch-message.txt"))
    assert after is not None and after.kind == "oom-after-load"


def test_long_evidence_is_cut_at_evidence_max() -> None:
    """The v0.11 OOM line runs past 400 characters: the evidence keeps 399 and an ellipsis."""
    result = diagnose(_log("vllm/oom-during-load-v0.11.log"))
    assert result is not None
    assert EVIDENCE_MAX == 400
    assert len(result.evidence) == 400
    assert result.evidence.endswith("…")
    assert result.evidence.startswith("Failed to create unquantized linear weights: CUDA out of")
    # A line under the limit is kept whole.
    short = diagnose(_log("vllm/cuda-oom-old-torch-message.txt"))
    assert not short.evidence.endswith("…")


# --- units: KiB, TiB, "GB", and torch 2.1's "capacty" -----------------------------------------


def test_torch_oom_in_kib() -> None:
    """shllln/GenerativeGraph #5: old torch reports both the request and the free memory in KiB."""
    result = diagnose(_log("vllm/cuda-oom-kib-old-torch-message.txt"))
    assert result is not None and result.kind == "oom-loading"
    # 1024 KiB = 1 MiB = 0.00098 GiB and 576 KiB = 0.00055 GiB: both 0.0 at two decimals.
    assert result.figures == {"tried_gib": 0.0, "total_gib": 11.17, "free_gib": 0.0, "gpu": 0}
    assert "of 11.17 GiB was free" in result.cause
    assert "1,024" not in result.cause and "576" not in result.cause
    # Not "allocating 0 GiB more failed": a few KiB is not nothing.
    assert (
        "(allocating less than 0.01 GiB more failed; less than 0.01 of 11.17 GiB was free)"
        in result.cause
    )


# torch's format_size (c10/cuda/CUDACachingAllocator.cpp) writes "N bytes" below 1 KiB. The
# line: a TabbyAPI log on a 24 GB card (23.99 GiB), as quoted in a public post-mortem; the same
# "of which 0 bytes is free" shape is in many public reports.
ZERO_BYTES = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total "
    "capacity of 23.99 GiB of which 0 bytes is free. Of the allocated memory 22.40 GiB is "
    "allocated by PyTorch, and 562.08 MiB is reserved by PyTorch but unallocated."
)


def test_torch_oom_with_zero_bytes_free() -> None:
    result = diagnose(ZERO_BYTES)
    assert result is not None and result.kind == "oom-loading"
    assert result.figures == {"tried_gib": 0.08, "total_gib": 23.99, "free_gib": 0.0, "gpu": 0}
    # Exactly zero stays "0", not "less than 0.01".
    assert "(allocating 0.08 GiB more failed; 0 of 23.99 GiB was free)" in result.cause
    # 512 bytes is below the two decimals shown: "less than 0.01".
    some = diagnose(ZERO_BYTES.replace("of which 0 bytes", "of which 512 bytes"))
    assert "less than 0.01 of 23.99 GiB was free" in some.cause


def test_torch_2_1_capacty_spelling() -> None:
    """wxian3/NeuroLens #2: torch 2.1 printed "total capacty"; the total must still be read."""
    result = diagnose(_log("vllm/cuda-oom-torch-2.1-capacty-typo.txt"))
    assert result is not None and result.kind == "oom-loading"
    assert result.figures == {"tried_gib": 55.57, "total_gib": 12.0, "free_gib": 9.02, "gpu": 0}
    assert "(allocating 55.57 GiB more failed; 9.02 of 12 GiB was free)" in result.cause


# vllm-project/vllm issue #13882 (V0 engine, 2025-02): the weights line says "GB" for GiB
# (model_runner.py divides by 2**30). It ends before the error, so the error line of vllm
# issue #10439's log (same V0 `raise_if_cache_size_invalid`) is appended.
V07 = "vllm/loading-model-weights-took-gb-v0.7.log"
NO_BLOCKS_LINE = _line("vllm/no-cache-blocks-v0.6.log", "ValueError: No available memory")


def test_weights_in_gb_are_read_as_gib() -> None:
    result = diagnose(_log(V07) + NO_BLOCKS_LINE + "\n")
    assert result is not None and result.kind == "no-cache-blocks"
    assert result.figures == {"weights_gib": 5.2}
    assert result.cause == (
        "After loading the weights no GPU memory is left for the KV cache (the weights took "
        "5.2 GiB)."
    )
    assert log_activity(_log(V07).splitlines()[0]) == "weights loaded: 5.20 GiB"
    # The log alone (no error line yet) diagnoses nothing.
    assert diagnose(_log(V07)) is None


def test_ollama_ram_in_tib() -> None:
    """Ollama's format.HumanBytes2 prints TiB from 1 TiB on; the line is the shape of the real
    ollama/cli-model-requires-more-system-memory.txt with the required figure in TiB."""
    real = _log("ollama/cli-model-requires-more-system-memory.txt").strip()
    result = diagnose(real.replace("(164.8 GiB)", "(1.5 TiB)"), "ollama")
    assert result is not None and result.kind == "ollama-ram"
    assert result.figures == {"required_gib": 1536.0, "available_gib": 13.4}
    assert result.cause.startswith("Ollama needs 1,536 GiB of system memory for the model but only")
    assert diagnose(real, "ollama").figures["required_gib"] == 164.8


# --- cleaning: terminal wraps and logfmt continuations -----------------------------------------


def test_line_wrapped_at_exactly_80_columns_is_joined() -> None:
    """An 80-column terminal copy of the DP0 line: every physical line is exactly 80 wide."""
    chunks = [FREE_LINE[i : i + 80] for i in range(0, len(FREE_LINE), 80)]
    assert len(chunks[0]) == 80 and len(chunks) == 4
    assert not any(c[:1].isspace() for c in chunks[1:])
    result = diagnose("\n".join(chunks))
    assert result is not None and result.kind == "free-memory"
    assert result.figures["free_gib"] == 3.22 and result.figures["total_gib"] == 4.0
    assert result.evidence.startswith("ValueError: Free memory on device (3.22/4.0 GiB)")


def test_line_after_a_wrapped_logfmt_record_is_its_own_line() -> None:
    """ollama/ollama #9181's hard-wrapped offload record (continuations >= 80 wide), then a
    real unprefixed line of an Ollama server log (#10553): it must not be glued to the record."""
    record = _log("ollama/server-log-offload-line-wrapped-4gpu.txt").splitlines()[:3]
    assert len(record[2]) >= 80
    text = "\n".join([*record, "releasing nvml library"])
    lines = clean_lines(text)
    assert lines[-1] == "releasing nvml library"
    assert len(lines) == 2 and "releasing" not in lines[0]
    result = diagnose(text, "ollama")
    assert result is not None and result.kind == "ollama-cpu-offload"
    assert "releasing" not in result.evidence
    assert result.figures == {"layers_offloaded": 44, "layers_total": 81}


# --- Ollama ----------------------------------------------------------------------------------

RUNNER_30 = _line("ollama/server-log-llama-runner-offloaded-30-of-81.log", "offloaded 30/81 layers")
LOGFMT_44 = _log("ollama/server-log-offload-line-wrapped-4gpu.txt")


def test_offload_later_runner_line_beats_earlier_scheduler_estimate() -> None:
    """The scheduler's estimate (logfmt, 44/81), then the runner's own count (30/81): the
    later report is what the runner did."""
    assert parse_ollama_offload(LOGFMT_44 + RUNNER_30 + "\n") == {
        "layers_offloaded": 30,
        "layers_total": 81,
    }


def test_offload_later_scheduler_line_beats_earlier_runner_line() -> None:
    """A full offload reported by the runner (the 30/81 line with 81/81: the same 81-layer
    model), then the scheduler's next load at 44/81: the later one wins."""
    full = RUNNER_30.replace("offloaded 30/81", "offloaded 81/81")
    assert parse_ollama_offload(full + "\n" + LOGFMT_44) == {
        "layers_offloaded": 44,
        "layers_total": 81,
    }
    assert parse_ollama_offload(full) == {"layers_offloaded": 81, "layers_total": 81}


def test_runner_died_reason_figure() -> None:
    # source: ollama llm/server.go (`llama runner process has terminated: %v`), exit status 2.
    result = diagnose("Error: llama runner process has terminated: exit status 2", "ollama")
    assert result is not None and result.kind == "ollama-runner-died"
    assert result.figures == {"reason": "exit status 2"}
    assert result.cause == "Ollama's llama runner exited: exit status 2."
    # The neighbour: a runner that died of an out-of-memory error is the OOM rule's.
    oom = diagnose(
        "Error: llama runner process has terminated: cudaMalloc failed: out of memory", "ollama"
    )
    assert oom is not None and oom.kind == "ollama-oom"


PULL = _log("ollama/cli-pull-progress.txt").splitlines()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (PULL[0], None),  # the shell prompt with the command
        (PULL[2], "pulling manifest"),
        (PULL[3], "pulling dde5aa3fc5ff: 100% of 2.0 GB"),
        (PULL[7], "pulling 56bb8bd477a5: 100% of 96 B"),
        (PULL[9], "verifying download"),
        (PULL[10], "writing manifest"),
        (PULL[11], "pull complete"),
    ],
)
def test_ollama_pull_progress_activity(line: str, expected: str | None) -> None:
    """pingcap/pytidb PR #102: `ollama pull` output, line by line."""
    assert log_activity(line, "ollama") == expected


def test_a_partial_offload_that_a_later_full_load_replaced_is_not_the_diagnosis() -> None:
    """The 30/81 runner line, then the same model loaded again fully (81/81): the latest load
    decides, as parse_ollama_offload says; only the reverse order is a diagnosis."""
    full = RUNNER_30.replace("offloaded 30/81", "offloaded 81/81")
    assert diagnose(RUNNER_30 + "\n" + full, "ollama") is None
    result = diagnose(full + "\n" + RUNNER_30, "ollama")
    assert result is not None and result.kind == "ollama-cpu-offload"
    assert result.figures == {"layers_offloaded": 30, "layers_total": 81}
    assert result.cause.startswith("Only 30 of 81 layers fit on the GPU")
