"""vLLM's memory fit at its edges: the refusal reports, the batch tiers' borders, the tight
thresholds and every suggestion, with the numbers worked out by hand.

Inputs (FACTS.md, docs/memory.md §3), as in tests/unit/test_fit_exact.py:
  CUDA sees memory.total - 479 MiB. H100 81,559 MiB -> 81,080 MiB = 79.180 GiB; RTX 4090
  24,564 -> 24,085 MiB = 23.521 GiB.
  Weights: BF16 + vision 24.006e9 x 2 B = 44.715 GiB; FP8 + vision 24.013 GiB; W4A16 + vision
  22.2278e9 x 4.125 / 8 + (1.3422e9 + 0.436e9) x 2 = 15.0176e9 B = 13.986 GiB.
  KV: 163,840 B per token in BF16 (80 KiB in FP8), whole 16-token blocks.
  Overhead per GPU: 0.75 + batched x (196,608 / TP + 40,960) B + 0.5 under TP + 1.0 (graphs);
  batch 2,048 below 40 GiB of CUDA memory, 4,096 from 40, 8,192 from 70, 16,384 from 160
  (vllm/engine/arg_utils.py get_batch_defaults): 2.203 / 2.656 / 3.5625 / 5.375 GiB at TP 1.
"""

from __future__ import annotations

import pytest

from msmall.backends.vllm.fit import vllm_batched_tokens
from msmall.preflight import check_fit
from msmall.profiles import load_profile, parse_set

GiB = 2**30
RTX4090, H100 = 24564, 81559


def prof(name: str, *sets: str):
    return load_profile(name, parse_set(list(sets)))


def test_fewer_gpus_than_tensor_parallel_reports_nothing_it_did_not_compute() -> None:
    """TP 2 on one GPU: no budget, overhead, cache or context is computed (all 0); only the
    weights per GPU are known: 24.013 / 2 = 12.01 GiB."""
    r = check_fit(prof("2x4090-fp8-vision"), [RTX4090])
    assert r.to_dict() | {"reason": "", "suggestion": ""} == {
        "verdict": "does_not_fit",
        "profile": "2x4090-fp8-vision",
        "backend": "vllm",
        "gpus_used": 1,
        "weights": "fp8",
        "kv_cache_dtype": "auto",
        "per_gpu_budget_gib": 0.0,
        "weights_per_gpu_gib": 12.01,
        "overhead_per_gpu_gib": 0.0,
        "kv_cache_gib": 0.0,
        "kv_tokens": 0,
        "requested_context": 32768,
        "max_context": 0,
        "full_length_concurrency": 0.0,
        "cpu_offload_gib": 0.0,
        "reason": "",
        "suggestion": "",
    }
    assert r.suggestion == "Run it on 2 GPUs, or pick a profile made for 1 GPU."
    none = check_fit(prof("2x4090-fp8-vision"), [])
    assert none.suggestion == "Run it on 2 GPUs, or pick a profile made for 0 GPUs."


@pytest.mark.parametrize(
    ("cuda_gib", "batch"),
    [(39.99, 2048), (40.0, 4096), (69.99, 4096), (70.0, 8192), (159.99, 8192), (160.0, 16384)],
)
def test_batch_tier_borders(cuda_gib: float, batch: int) -> None:
    """get_batch_defaults' floors are inclusive: 40, 70 and 160 GiB get the larger batch."""
    assert vllm_batched_tokens(cuda_gib) == batch


def test_a_192_gib_card_gets_the_largest_batch() -> None:
    """h100-bf16-vision (64k) on a 196,608 MiB card: CUDA 196,129 MiB = 191.532 GiB; budget
    0.92 x 191.532 = 176.21 GiB; batch 16,384: overhead 0.75 + 16,384 x 237,568 B (3.625) + 1.0
    = 5.375 GiB; KV 176.21 - 44.715 - 5.375 = 126.12 GiB = 826,528 tokens (in 16s), capped at
    131,072 for the context; 826,528 / 65,536 = 12.61 requests."""
    r = check_fit(prof("h100-bf16-vision"), [196608])
    assert r.verdict == "fits"
    assert r.per_gpu_budget_gib == 176.21
    assert r.kv_cache_gib == 126.12
    assert r.kv_tokens == 826528
    assert r.max_context == 131072
    assert r.full_length_concurrency == 12.61


def test_free_memory_border_is_utilization_times_cuda_memory() -> None:
    """vLLM wants 0.92 x 81,080 MiB = 74,593.6 MiB free on an H100: 74,593 is refused, 74,594
    passes. The refusal computes no context (0) and no concurrency (0.0).

    Its suggestion: 74,593 / 81,080 = 0.91999 of the GPU is free -> 0.91, less a 0.01 margin =
    0.90. At 0.90: budget 71.262 GiB, batch 8,192 (3.5625 GiB), KV 71.262 - 44.715 - 3.5625 =
    22.985 GiB = 150,624 tokens.
    """
    ok = check_fit(prof("h100-bf16-vision"), [H100], free_mib=[74594])
    assert ok.verdict == "fits"
    r = check_fit(prof("h100-bf16-vision"), [H100], free_mib=[74593])
    assert r.verdict == "does_not_fit"
    assert (r.max_context, r.full_length_concurrency) == (0, 0.0)
    assert r.reason == (
        "vLLM refuses to start: GPU 0 has 72.8 GiB free, less than gpu_memory_utilization 0.92 x "
        "79.2 GiB = 72.8 GiB."
    )
    assert r.suggestion == (
        "Stop the other processes on the GPU (nvidia-smi lists them), or --set "
        "gpu_memory_utilization=0.90 (then 150,624 tokens of KV cache)."
    )


def test_free_memory_names_the_gpu_that_is_short() -> None:
    """TP 2 on two 4090s, the second with 10,000 MiB free (< 0.92 x 24,085 = 22,158 MiB)."""
    r = check_fit(prof("2x4090-fp8-vision"), [RTX4090, RTX4090], free_mib=[24000, 10000])
    assert r.reason.startswith("vLLM refuses to start: GPU 1 has 9.8 GiB free")


def test_almost_no_free_memory_only_says_stop_the_others() -> None:
    """3,000 MiB free of 81,080: 0.037 -> 0.03 - 0.01 = 0.02, under 0.05: no utilisation to
    suggest."""
    r = check_fit(prof("h100-bf16-vision"), [H100], free_mib=[3000])
    assert r.suggestion == "Stop the other processes on the GPU (nvidia-smi lists them)."


def test_under_one_gib_of_cache_is_tight_not_refused() -> None:
    """h100-bf16-vision, 4,608 tokens, one image, on a 54,097 MiB card: CUDA 53,618 MiB =
    52.361 GiB (batch 4,096: 2.656 GiB); KV 0.92 x 52.361 - 44.715 - 2.656 = 0.80 GiB = 5,248
    tokens; 5,248 / 4,608 = 1.14 requests. It fits, but both tight rules hold; fp8 would hold
    2 x 5,248 = 10,496 tokens."""
    r = check_fit(
        prof("h100-bf16-vision", "serving.max_model_len=4608", "serving.images_per_prompt=1"),
        [54097],
    )
    assert r.verdict == "tight"
    assert (r.kv_cache_gib, r.kv_tokens, r.full_length_concurrency) == (0.8, 5248, 1.14)
    assert r.reason.endswith(
        "; tight: fewer than 1.5 full-length requests fit at once; under 1 GiB of KV cache per GPU."
    )
    assert r.suggestion == "--set kv_cache_dtype=fp8 doubles the KV cache (about 10,496 tokens)."
    fp8 = check_fit(
        prof(
            "h100-bf16-vision", "serving.max_model_len=4608", "serving.images_per_prompt=1",
            "serving.kv_cache_dtype=fp8",
        ),
        [54097],
    )  # fmt: skip
    assert fp8.kv_tokens == 10496
    assert fp8.verdict == "tight"  # still under 1 GiB per GPU
    assert fp8.suggestion is None  # the cache is already FP8


@pytest.mark.parametrize(
    ("mib", "tokens", "concurrency", "verdict"),
    [(69900, 98288, 1.5, "fits"), (69800, 97712, 1.49, "tight")],
)
def test_one_and_a_half_requests_is_not_tight(
    mib: int, tokens: int, concurrency: float, verdict: str
) -> None:
    """h100-bf16-vision (65,536 tokens). 69,900 MiB: CUDA 69,421 MiB = 67.794 GiB (batch 4,096);
    KV 0.92 x 67.794 - 44.715 - 2.656 = 15.00 GiB = 98,288 tokens = 1.50 x 65,536: fits (the
    rule is "fewer than 1.5"). 100 MiB less: KV 14.910 GiB = 97,712 tokens, 1.49: tight."""
    r = check_fit(prof("h100-bf16-vision"), [mib])
    assert (r.kv_tokens, r.full_length_concurrency, r.verdict) == (tokens, concurrency, verdict)


def test_no_room_reasons_and_smaller_weights_one_gpu() -> None:
    """BF16 on one 4090: budget 0.92 x 23.521 = 21.64 GiB < 44.715 of weights. Overhead (batch
    2,048, TP 1) 2.203 GiB. A 32k request more needs 32,768 x 160 KiB = 5.0 GiB:
    0.92 x (S - 0.468) >= 44.715 + 2.656 + 5.0 -> S >= 57.39 -> 58 GiB (57 holds 30,400
    tokens, 58 holds 36,416)."""
    r = check_fit(prof("h100-bf16-vision", "serving.max_model_len=32768"), [RTX4090])
    assert r.reason == (
        "BF16 weights take 44.7 GiB per GPU plus 2.2 GiB of overhead, but the budget is 0.92 x "
        "23.5 GiB = 21.6 GiB per GPU: no room for a KV cache."
    )
    assert r.suggestion == (
        "Use smaller weights: fp8 (about 24 GiB) or w4a16 (about 14 GiB), or a GPU with at "
        "least 58 GiB."
    )


def test_no_room_auto_context_advises_for_32k() -> None:
    """max_model_len auto sizes the advice for a 32,768-token request: 58 GiB, as above (not
    the 64k profile's 63 GiB)."""
    r = check_fit(prof("h100-bf16-vision", "serving.max_model_len=auto"), [RTX4090])
    assert r.verdict == "does_not_fit"
    assert (r.suggestion or "").endswith("or a GPU with at least 58 GiB.")


def test_no_room_reasons_under_tensor_parallel() -> None:
    """BF16 on two 4090s: 44.715 / 2 = 22.36 GiB per GPU; overhead 0.75 + 2,048 x 139,264 B
    (0.266) + 0.5 + 1.0 = 2.516 GiB; budget 21.64 per GPU, 43.28 on both."""
    r = check_fit(prof("2x4090-bf16-vision"), [RTX4090, RTX4090])
    assert r.reason == (
        "BF16 weights take 22.4 GiB per GPU (44.7 GiB over tensor parallel 2) plus 2.5 GiB of "
        "overhead, but the budget is 0.92 x 23.5 GiB = 21.6 GiB per GPU (43.3 GiB on 2 GPUs): "
        "no room for a KV cache."
    )
    assert r.suggestion == (
        "Use smaller weights: fp8 (about 24 GiB) or w4a16 (about 14 GiB), or 2 GPUs with at "
        "least 31 GiB each."
    )


def test_no_smaller_weights_than_w4a16() -> None:
    """W4A16 (13.986 GiB) on a 16,380 MiB card: budget 0.92 x 15.527 = 14.28 GiB, less than the
    weights plus 2.203 of overhead. Nothing is smaller than 4 bits; a 32k request needs
    0.92 x (S - 0.468) >= 13.986 + 2.203 + 5.0 -> S >= 23.50 -> 24 GiB (23 holds 29,744
    tokens, 24 holds 35,776)."""
    r = check_fit(prof("4090-q4"), [16380], "vllm")
    assert r.verdict == "does_not_fit"
    assert r.suggestion == "Use a GPU with at least 24 GiB, or more GPUs with tensor parallel."


def test_too_long_context_suggestions_without_a_shorter_context() -> None:
    """65,536 tokens on the 54,097 MiB card (0.80 GiB of KV: 5,248 BF16 tokens, 10,496 FP8).
    Eight images need 8 x 3,080 + 1,024 = 25,664 tokens, more than either holds, so no shorter
    max_model_len is offered: FP8 is, and with an FP8 cache already, only more memory."""
    r = check_fit(prof("h100-bf16-vision"), [54097])
    assert r.verdict == "does_not_fit"
    assert r.suggestion == "--set kv_cache_dtype=fp8 (holds 10,496 tokens)"
    fp8 = check_fit(prof("h100-bf16-vision", "serving.kv_cache_dtype=fp8"), [54097])
    assert fp8.verdict == "does_not_fit"
    assert fp8.suggestion == "Use a GPU with more memory or smaller weights."


def test_w4a16_on_one_4090_exact() -> None:
    """4090-q4 under vLLM: W4A16 + vision 13.986 GiB (4 bits + a BF16 scale per group of 128 =
    4.125 bits per decoder weight); KV 21.639 - 13.986 - 2.203 = 5.450 GiB = 35,712 tokens
    (16s); 35,712 / 32,768 = 1.09 requests: tight."""
    r = check_fit(prof("4090-q4"), [RTX4090], "vllm")
    assert (r.weights_per_gpu_gib, r.kv_cache_gib, r.kv_tokens) == (13.99, 5.45, 35712)
    assert (r.verdict, r.full_length_concurrency) == ("tight", 1.09)


def test_a_256_token_cache_serves_a_256_token_context() -> None:
    """h100-bf16-vision at max_model_len 256 on a 53,250 MiB card: CUDA 52,771 MiB = 51.534 GiB
    (batch 4,096: 2.656 GiB); KV 0.92 x 51.534 - 44.715 - 2.656 = 0.0405 GiB = 265 tokens ->
    256 in whole blocks: exactly the 256 asked for, so it is served (tight: no room for an
    image)."""
    r = check_fit(prof("h100-bf16-vision", "serving.max_model_len=256"), [53250])
    assert (r.kv_tokens, r.max_context) == (256, 256)
    assert r.verdict == "tight"


def test_auto_under_1024_tokens_is_no_fit() -> None:
    """max_model_len auto on a 53,318 MiB card: CUDA 51.600 GiB; KV 0.92 x 51.600 - 44.715 -
    2.656 = 0.102 GiB = 656 tokens: a cache exists, but under the 1,024 tokens worth serving."""
    r = check_fit(prof("h100-bf16-vision", "serving.max_model_len=auto"), [53318])
    assert (r.kv_tokens, r.verdict) == (656, "does_not_fit")
    assert r.reason.endswith("no room for a KV cache.")


def test_auto_advice_is_for_32768_tokens_exactly() -> None:
    """W4A16 text-only (22.2278e9 x 4.125 / 8 + 1.3422e9 x 2 = 14.1456e9 B = 13.174 GiB), 0.90
    utilisation, --enforce-eager (overhead 0.75 + 2,048 x 237,568 B = 1.203 GiB), auto: the
    advice sizes one 32,768-token request (5.0 GiB). 22 GiB: KV 0.9 x 21.532 - 13.174 - 1.203 =
    5.0017 GiB = 32,779 tokens -> 32,768 in blocks, just enough; 21 GiB is not."""
    r = check_fit(
        prof(
            "4090-q4", "serving.vision=false", "serving.images_per_prompt=0",
            "serving.gpu_memory_utilization=0.9", "serving.max_model_len=auto",
            'extra_args=["--enforce-eager"]',
        ),
        [16380],
        "vllm",
    )  # fmt: skip
    assert r.verdict == "does_not_fit"
    assert r.suggestion == "Use a GPU with at least 22 GiB, or more GPUs with tensor parallel."


def test_advice_counts_the_driver_reserve_exactly() -> None:
    """2x4090-bf16-vision text-only at 0.90, 4,096 tokens: per GPU 43.903 / 2 = 21.951 GiB of
    weights + 2.516 overhead + 4,096 x 81,920 B (0.3125) of KV = 24.779 GiB; 24.779 / 0.9 =
    27.533 GiB of CUDA memory + the 479 MiB (0.46777 GiB) driver reserve = 28.0004 GiB: a 28 GiB
    card holds 4,080 tokens, 16 short, so the advice is 29 GiB each."""
    r = check_fit(
        prof(
            "2x4090-bf16-vision", "serving.vision=false", "serving.images_per_prompt=0",
            "serving.gpu_memory_utilization=0.9", "serving.max_model_len=4096",
        ),
        [RTX4090, RTX4090],
    )  # fmt: skip
    assert r.verdict == "does_not_fit"
    assert (r.suggestion or "").endswith("or 2 GPUs with at least 29 GiB each.")


def test_awq_weights_exact() -> None:
    """AWQ: 4 bits + a BF16 scale and a packed 4-bit zero point per group of 128 = 4.15625 bits
    per decoder weight: 22,227,822,720 x 4.15625 / 8 = 11,548,048,522.5 B, plus the BF16
    embedding/head (1,342,177,280 x 2) and vision (0.436e9 x 2) = 15,104,403,082.5 B =
    14.067 GiB; 13.255 GiB without the vision tower."""
    from msmall.backends.vllm.fit import vllm_weights_gib

    assert round(vllm_weights_gib("awq"), 3) == 14.067
    assert round(vllm_weights_gib("awq", vision=False), 3) == 13.255


def test_just_over_one_gib_of_cache_fits() -> None:
    """4,104 tokens (one image + 1,024 of text) on a 54,374 MiB card: CUDA 53,895 MiB = 52.632
    GiB; KV 0.92 x 52.632 - 44.715 - 2.656 = 1.050 GiB = 6,880 tokens = 1.68 requests: over
    1 GiB and over 1.5 requests, so it fits."""
    r = check_fit(
        prof("h100-bf16-vision", "serving.max_model_len=4104", "serving.images_per_prompt=1"),
        [54374],
    )
    assert (r.kv_cache_gib, r.kv_tokens, r.full_length_concurrency) == (1.05, 6880, 1.68)
    assert r.verdict == "fits"
