"""The memory-fit model against the ground truth in shared/FACTS.md and the sample logs."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msmall import fit, preflight
from msmall.backends.ollama import fit as ollama_fit
from msmall.backends.vllm import fit as vllm_fit
from msmall.errors import ConfigError
from msmall.models import MISTRAL_SMALL_3_1 as m
from msmall.profiles import Profile, load_profile, profile_names

REPO_ROOT = Path(__file__).parents[2]
LOGS = Path(__file__).parents[1] / "data" / "logs"
RTX_4090 = 24564  # MiB, nvidia-smi memory.total (rtx4090-x8.txt)
RTX_3090 = 24576
H100 = 81559  # h100-80gb-hbm3-idle.txt
A10 = 22731  # nvidia-smi on an A10 with ECC on (vLLM issue #16128 ran on A10s)


def within(value: float, truth: float, rel: float = 0.10) -> bool:
    return abs(value - truth) <= rel * abs(truth)


def log_number(path: Path, pattern: str) -> float:
    text = path.read_text(encoding="utf-8")
    match = re.search(pattern, text)
    assert match, f"{path.name}: no line matches {pattern!r}"
    return float(match.group(1).replace(",", ""))


@functools.cache
def shipped() -> dict[str, Profile]:
    return {name: load_profile(name) for name in profile_names()}


def variant(name: str, **serving: object) -> Profile:
    prof = shipped()[name].model_copy(deep=True)
    for key, value in serving.items():
        setattr(prof.serving, key, value)
    return prof


# ---------------------------------------------------------------------------------------------
# Ground truth (each within 10%)


def test_bf16_weights_match_the_facts_and_the_measurement() -> None:
    assert vllm_fit.vllm_weights_gib("bf16") == pytest.approx(44.72, abs=0.01)  # FACTS
    # vLLM #16128: "on 4A10, it took 44.5G to the model weights".
    assert within(vllm_fit.vllm_weights_gib("bf16"), 44.5)


def test_quantized_weights_match_the_facts() -> None:
    assert within(vllm_fit.vllm_weights_gib("fp8"), 25.0)  # FACTS: FP8-dynamic ~25 GiB
    assert within(vllm_fit.vllm_weights_gib("w4a16"), 14.0)  # FACTS: w4a16 ~14 GiB
    assert vllm_fit.vllm_weights_gib("bf16", vision=False) < vllm_fit.vllm_weights_gib("bf16") - 0.7


def test_ollama_weights_match_the_server_logs() -> None:
    q4_log = LOGS / "ollama" / "server-log-mistral-small3.1-offload-41-of-41.log"
    assert m.ollama_text_weights_gib["q4_K_M"] == log_number(
        q4_log, r'memory\.weights\.total="([\d.]+) GiB"'
    )
    projector_mib = log_number(q4_log, r'projector\.weights="([\d.]+) MiB"')
    assert pytest.approx(projector_mib / 1024) == m.ollama_projector_gib
    assert log_number(q4_log, r'projector\.graph="([\d.]+) GiB"') == m.ollama_vision_graph_gib
    # q8_0: the weight buffers on CUDA0, CUDA1 and CPU hold text and vision together.
    q8 = (LOGS / "ollama" / "server-log-mistral-small3.1-q8-2gpu-debug.log").read_text()
    buffers = re.findall(r'msg="model weights" buffer=\w+ size="([\d.]+) (GiB|MiB)"', q8)
    total = sum(float(v) / (1024 if unit == "MiB" else 1) for v, unit in buffers)
    assert within(m.ollama_text_weights_gib["q8_0"] + m.ollama_projector_gib, total)


def test_ollama_kv_cache_is_20_gib_at_128k_and_640_mib_at_4k() -> None:
    long = variant("4090-q4", max_model_len=131072)
    report = preflight.check_fit(long, [H100])
    assert report.kv_cache_dtype == "f16"
    assert within(report.kv_cache_gib, 20.0)  # FACTS: Ollama reports 20.0 GiB at 128k
    q4_log = LOGS / "ollama" / "server-log-mistral-small3.1-offload-41-of-41.log"
    kv_4k_mib = log_number(q4_log, r'memory\.required\.kv="([\d.]+) MiB"')
    assert within(4096 * fit.kv_bytes_per_token("f16") / 2**20, kv_4k_mib)


def test_awq_on_a24gb_a10_gives_the_logged_kv_tokens() -> None:
    log = LOGS / "vllm" / "mistral3.1-awq-24gb-kv-then-crash-v0.8.log"
    logged_tokens = log_number(log, r"GPU KV cache size: ([\d,]+) tokens")
    logged_concurrency = log_number(
        log, r"Maximum concurrency for 4,096 tokens per request: ([\d.]+)x"
    )
    # The command behind that log (vllm #16128, posted a minute before it): TP 1,
    # --max-model-len 4096 --gpu-memory-utilization 0.95 --max-num-seqs 2. vLLM 0.8.3 captured
    # CUDA graphs after sizing the cache, so they were not in its budget.
    kv_gib = vllm_fit.vllm_kv_cache_gib(
        (A10 - fit.DRIVER_RESERVED_MIB) / 1024,
        0.95,
        vllm_fit.vllm_weights_gib("awq"),
        tensor_parallel_size=1,
        cuda_graphs=False,
    )
    tokens = fit.kv_tokens_for(kv_gib, fit.kv_bytes_per_token("auto"), vllm_fit.VLLM_BLOCK_TOKENS)
    assert within(tokens, logged_tokens)
    assert within(tokens / 4096, logged_concurrency)


def test_bf16_on_two_4090s_does_not_fit() -> None:
    report = preflight.check_fit(shipped()["2x4090-bf16-vision"], [RTX_4090, RTX_4090])
    assert report.verdict == "does_not_fit"
    two_gpu_budget = 2 * report.per_gpu_budget_gib
    assert within(two_gpu_budget, 44.1)  # FACTS: two 4090s at 0.92 give about 44.1 GiB
    assert two_gpu_budget < vllm_fit.vllm_weights_gib("bf16")
    assert report.max_context == 0
    assert "weights" in report.reason and "44.7" in report.reason
    assert "fp8" in (report.suggestion or "")


def test_fp8_on_two_4090s_fits_32k_with_vision() -> None:
    report = preflight.check_fit(shipped()["2x4090-fp8-vision"], [RTX_4090, RTX_4090])
    assert report.verdict == "fits"
    assert report.requested_context == 32768
    assert report.max_context >= 32768
    # docs/memory.md §3: 93,264 tokens of KV cache = 2.85 requests of 32,768 at once.
    assert report.full_length_concurrency == 2.85
    assert within(report.weights_per_gpu_gib * 2, 25.0)


def test_bf16_vision_fits_one_h100_with_20_to_25_gib_of_kv() -> None:
    report = preflight.check_fit(shipped()["h100-bf16-vision"], [H100])
    assert report.verdict == "fits"
    assert 20 * 0.9 <= report.kv_cache_gib <= 25 * 1.1  # FACTS: roughly 20-25 GiB for KV
    assert report.max_context == m.max_context
    # The profile's description: full 128k is "about one such request at a time".
    full = preflight.check_fit(variant("h100-bf16-vision", max_model_len=131072), [H100])
    assert full.verdict == "tight" and 1 <= full.full_length_concurrency < 1.5


@pytest.mark.parametrize("backend", ["ollama", "vllm", "docker"])
def test_4090_q4_fits_one_4090(backend: str) -> None:
    report = preflight.check_fit(shipped()["4090-q4"], [RTX_4090], backend)
    assert report.verdict in ("fits", "tight")
    assert report.max_context >= 32768
    assert report.full_length_concurrency >= 1
    if backend == "ollama":
        # Text fully on GPU; only the vision encoder (with its 8.8 GiB image graph) moves to CPU.
        assert report.weights == "q4_K_M"
        assert report.cpu_offload_gib == pytest.approx(
            m.ollama_projector_gib + m.ollama_vision_graph_gib, abs=0.01
        )
        assert "CPU" in report.reason
    else:
        assert report.weights == "w4a16"


def test_fp8_weights_do_not_fit_one_24gb_card() -> None:
    # FACTS: FP8-dynamic (~25 GiB) does not fit 24 GB.
    one_gpu = variant("2x4090-fp8-vision", tensor_parallel_size=1)
    assert preflight.check_fit(one_gpu, [RTX_4090]).verdict == "does_not_fit"


# ---------------------------------------------------------------------------------------------
# Pieces


def test_kv_bytes_per_token() -> None:
    assert fit.kv_bytes_per_token("auto") == 160 * 1024
    assert fit.kv_bytes_per_token("fp8") == 80 * 1024
    assert fit.kv_bytes_per_token("fp8_e5m2", 2) == 40 * 1024
    assert fit.kv_bytes_per_token("q8_0") == 85 * 1024
    assert fit.kv_bytes_per_token("q4_0") == 45 * 1024
    # FACTS: 32k tokens = 5 GiB, 128k = 20 GiB in bf16.
    assert 32768 * fit.kv_bytes_per_token("bf16") == 5 * 2**30
    with pytest.raises(ConfigError):
        fit.kv_bytes_per_token("int3")


@pytest.mark.parametrize(
    ("tag", "quant"),
    [
        ("mistral-small3.1", "q4_K_M"),
        ("mistral-small3.1:latest", "q4_K_M"),
        ("mistral-small3.1:24b", "q4_K_M"),
        ("mistral-small3.1:24b-instruct-2503-q4_K_M", "q4_K_M"),
        ("mistral-small3.1:24b-instruct-2503-q8_0", "q8_0"),
        ("mistral-small3.1:24b-instruct-2503-fp16", "fp16"),
    ],
)
def test_ollama_quant_from_tag(tag: str, quant: str) -> None:
    assert ollama_fit.ollama_quant(tag) == quant


def test_unknown_ollama_tag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="quantization"):
        ollama_fit.ollama_quant("mistral-small3.1:24b-instruct-2503-q5_K_S")


def test_ollama_kv_type_mapping() -> None:
    assert ollama_fit.ollama_kv_type("auto") == "f16"
    assert ollama_fit.ollama_kv_type("fp8_e4m3") == "q8_0"
    assert ollama_fit.ollama_kv_type("auto", {"OLLAMA_KV_CACHE_TYPE": "q4_0"}) == "q4_0"
    # Quantized caches need flash attention; Ollama falls back to f16 without it.
    assert ollama_fit.ollama_kv_type("fp8", {"OLLAMA_FLASH_ATTENTION": "0"}) == "f16"


def test_batched_token_tiers() -> None:
    assert vllm_fit.vllm_batched_tokens(23.5) == 2048
    assert vllm_fit.vllm_batched_tokens(44.5) == 4096
    assert vllm_fit.vllm_batched_tokens(79.2) == 8192
    assert vllm_fit.vllm_batched_tokens(178.0) == 16384


def test_fewer_gpus_than_tensor_parallel() -> None:
    report = preflight.check_fit(shipped()["2x4090-fp8-vision"], [RTX_4090])
    assert report.verdict == "does_not_fit"
    assert report.reason == "Tensor parallel 2 needs 2 GPUs; 1 given."
    assert report.max_context == 0


def test_free_memory_below_the_budget_stops_vllm() -> None:
    prof = shipped()["h100-bf16-vision"]
    report = preflight.check_fit(prof, [H100], free_mib=[60_000])
    assert report.verdict == "does_not_fit"
    assert "refuses to start" in report.reason and "58.6 GiB free" in report.reason
    assert report.max_context == 0
    # 0.73 of the GPU would pass the check, but BF16 weights leave nothing for the cache there.
    assert "does not fit either" in (report.suggestion or "")
    assert preflight.check_fit(prof, [H100], free_mib=[81_000]).verdict == "fits"


def test_free_memory_suggests_a_lower_utilization_when_that_fits() -> None:
    report = preflight.check_fit(shipped()["4090-q4"], [H100], "vllm", free_mib=[60_000])
    assert report.verdict == "does_not_fit"
    assert "--set gpu_memory_utilization=0.73" in (report.suggestion or "")


def test_auto_takes_the_largest_context_that_fits() -> None:
    on_h100 = preflight.check_fit(variant("h100-bf16-vision", max_model_len="auto"), [H100])
    assert on_h100.requested_context == on_h100.max_context == m.max_context
    q4 = variant("4090-q4", max_model_len="auto")
    on_4090 = preflight.check_fit(q4, [RTX_4090], "vllm")
    assert on_4090.requested_context == on_4090.max_context
    assert 30_000 < on_4090.max_context < 40_000
    assert preflight.largest_context(q4, [RTX_4090], "vllm") == on_4090.max_context


def test_too_long_a_context_suggests_one_that_fits() -> None:
    prof = variant("4090-q4", max_model_len=65536)
    report = preflight.check_fit(prof, [RTX_4090], "vllm")
    assert report.verdict == "does_not_fit"
    assert "65,536-token request" in report.reason
    match = re.search(r"--set max_model_len=(\d+)", report.suggestion or "")
    assert match
    shorter = variant("4090-q4", max_model_len=int(match.group(1)))
    assert preflight.check_fit(shorter, [RTX_4090], "vllm").verdict != "does_not_fit"
    assert "kv_cache_dtype=fp8" in (report.suggestion or "")


def test_ollama_spills_to_cpu_when_the_text_model_does_not_fit() -> None:
    prof = shipped()["4090-q4"].model_copy(deep=True)
    prof.model.ollama_tag = "mistral-small3.1:24b-instruct-2503-fp16"
    report = preflight.check_fit(prof, [RTX_4090])
    assert report.verdict == "does_not_fit"
    assert re.match(r"Does not fit on GPU: [\d.]+ GiB would run on CPU\.", report.reason)
    assert report.cpu_offload_gib > 20
    assert report.full_length_concurrency == 0


def test_ollama_on_a_large_gpu_keeps_vision_on_gpu() -> None:
    report = preflight.check_fit(shipped()["4090-q4"], [H100])
    assert report.verdict == "fits"
    assert report.cpu_offload_gib == 0


def test_ollama_auto_uses_ollamas_own_default_context() -> None:
    auto = variant("4090-q4", max_model_len="auto")
    assert preflight.check_fit(auto, [20_000]).requested_context == 4096  # under 23 GiB
    assert preflight.check_fit(auto, [RTX_4090]).requested_context == 32768  # 23.5 GiB
    assert preflight.check_fit(auto, [H100]).requested_context == m.max_context  # 256k, clamped


def test_too_many_images_for_the_context_is_tight() -> None:
    prof = variant("h100-bf16-vision", max_model_len=8192, images_per_prompt=4)
    report = preflight.check_fit(prof, [H100])
    assert report.verdict == "tight"
    assert "12,320" in report.reason
    assert report.suggestion and "images_per_prompt=2" in report.suggestion


def test_simulator_needs_no_gpu() -> None:
    report = preflight.check_fit(shipped()["demo"], [])
    assert report.verdict == "fits" and report.gpus_used == 0


def test_unknown_backend_and_mismatched_free_list() -> None:
    with pytest.raises(ConfigError):
        preflight.check_fit(shipped()["4090-q4"], [RTX_4090], "tgi")
    with pytest.raises(ConfigError):
        preflight.check_fit(shipped()["4090-q4"], [RTX_4090], free_mib=[1, 2])


def test_report_to_dict() -> None:
    data = preflight.check_fit(shipped()["h100-bf16-vision"], [H100]).to_dict()
    for key in (
        "verdict",
        "per_gpu_budget_gib",
        "weights_per_gpu_gib",
        "overhead_per_gpu_gib",
        "kv_cache_gib",
        "kv_tokens",
        "requested_context",
        "max_context",
        "full_length_concurrency",
        "reason",
        "suggestion",
    ):
        assert key in data
    # The budget splits into weights, overhead and cache.
    parts = data["weights_per_gpu_gib"] + data["overhead_per_gpu_gib"] + data["kv_cache_gib"]
    assert parts == pytest.approx(data["per_gpu_budget_gib"], abs=0.02)


def test_alternatives_name_a_profile_that_fits() -> None:
    report = preflight.check_fit(
        shipped()["2x4090-bf16-vision"],
        [RTX_4090, RTX_4090],
        alternatives=shipped().values(),
    )
    assert report.suggestion == "Use the profile 2x4090-fp8-vision, which fits these GPUs."


@pytest.mark.parametrize(
    ("gpus", "best"),
    [
        ([RTX_4090], "4090-q4"),
        ([RTX_3090], "4090-q4"),
        ([RTX_4090, RTX_4090], "2x4090-fp8-vision"),
        ([H100], "h100-bf16-vision"),
        ([46068, 46068], "2x4090-bf16-vision"),  # two L40S: the BF16 profile's "48 GB cards"
        ([8192], None),
        ([], None),
    ],
)
def test_recommend(gpus: list[int], best: str | None) -> None:
    assert preflight.recommend(shipped().values(), gpus) == best


def test_docs_table_is_generated_from_this_module() -> None:
    doc = (REPO_ROOT / "docs" / "memory.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- fit-table:start -->\n(.*?)\n<!-- fit-table:end -->", doc, re.S)
    assert block, "docs/memory.md lost its fit-table markers"
    assert block.group(1) == preflight.markdown_table(shipped().values()), (
        "docs/memory.md is out of date: regenerate the table with the command above it"
    )


# ---------------------------------------------------------------------------------------------
# Properties

GPU_PROFILES = ["2x4090-bf16-vision", "2x4090-fp8-vision", "4090-q4", "h100-bf16-vision"]
relaxed = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def setups(draw: st.DrawFn, allow_ollama_auto: bool = False) -> tuple[Profile, str, list[int]]:
    name = draw(st.sampled_from(GPU_PROFILES))
    backend = draw(st.sampled_from(["vllm", "ollama"]))
    serving: dict[str, object] = {}
    if draw(st.booleans()) and (backend == "vllm" or allow_ollama_auto):
        serving["max_model_len"] = "auto"
    serving["kv_cache_dtype"] = draw(st.sampled_from(["auto", "fp8"]))
    prof = variant(name, **serving)
    count = draw(st.integers(prof.serving.tensor_parallel_size, 2))
    gpus = draw(st.lists(st.integers(4_000, 200_000), min_size=count, max_size=count))
    return prof, backend, gpus


@relaxed
@given(setup=setups(), extra=st.lists(st.integers(0, 100_000), min_size=2, max_size=2))
def test_more_memory_never_makes_a_fit_worse(
    setup: tuple[Profile, str, list[int]], extra: list[int]
) -> None:
    # Not for Ollama under "auto": Ollama itself picks a longer default context on bigger GPUs
    # (4k / 32k / 256k), which can turn "fits" into "tight".
    prof, backend, gpus = setup
    bigger = [g + e for g, e in zip(gpus, extra, strict=False)]
    before = preflight.check_fit(prof, gpus, backend)
    after = preflight.check_fit(prof, bigger, backend)
    assert fit.verdict_rank(after.verdict) >= fit.verdict_rank(before.verdict)
    assert after.kv_cache_gib >= before.kv_cache_gib or backend == "ollama"


@relaxed
@given(
    setup=setups(allow_ollama_auto=True),
    extra=st.lists(st.integers(0, 100_000), min_size=2, max_size=2),
)
def test_max_context_is_monotone_and_capped(
    setup: tuple[Profile, str, list[int]], extra: list[int]
) -> None:
    prof, backend, gpus = setup
    bigger = [g + e for g, e in zip(gpus, extra, strict=False)]
    small = preflight.largest_context(prof, gpus, backend)
    large = preflight.largest_context(prof, bigger, backend)
    assert 0 <= small <= large <= m.max_context


@relaxed
@given(
    name=st.sampled_from(GPU_PROFILES),
    gpus=st.lists(st.integers(20_000, 200_000), min_size=2, max_size=2),
)
def test_fp8_kv_holds_twice_the_tokens_of_bf16(name: str, gpus: list[int]) -> None:
    bf16 = preflight.check_fit(variant(name, kv_cache_dtype="auto"), gpus, "vllm")
    fp8 = preflight.check_fit(variant(name, kv_cache_dtype="fp8"), gpus, "vllm")
    assert fp8.kv_cache_gib == bf16.kv_cache_gib
    # Within one 16-token block of exactly twice.
    assert abs(fp8.kv_tokens - 2 * bf16.kv_tokens) <= vllm_fit.VLLM_BLOCK_TOKENS
