"""Ollama's memory fit at its edges, every number worked out by hand.

Inputs (FACTS.md, docs/memory.md §4; Ollama's sources named where a rule copies them):
  CUDA sees memory.total - 479 MiB; Ollama keeps 457 MiB = 0.4463 GiB free per GPU
  (discover/gpu.go cudaMinimumMemory). RTX 4090 24,564 MiB: (24,085 - 457) MiB = 23.074 GiB usable.
  Q4_K_M text weights 13.1 GiB (OLLAMA-Q4 memory.weights.total); 0.5 GiB text compute graph
  per GPU with flash attention; vision 769.3 MiB + 8.8 GiB image graph = 9.551 GiB, offloaded
  first (ollama #10833).
  KV per token: 81,920 values; f16 2 B = 160 KiB; q8_0 34/32 B; q4_0 18/32 B = 46,080 B.
  Without flash attention llama.cpp keeps f32 KQ scores: 512 (batch) x 32 query heads x 4 B =
  65,536 B per context token, on top of the 0.5 GiB.
  4090-q4: one slot, 32,768 tokens: 32,768 x 160 KiB = 5.0 GiB of cache; 13.1 + 5.0 + 0.5 = 18.6.
"""

from __future__ import annotations

import pytest

from msmall.backends.ollama.fit import ollama_default_context
from msmall.errors import ConfigError
from msmall.preflight import check_fit
from msmall.profiles import load_profile, parse_set

GiB = 2**30
RTX4090, H100 = 24564, 81559


def prof(*sets: str, name: str = "4090-q4"):
    return load_profile(name, parse_set(list(sets)))


def with_env(profile, **env: str):
    """The profile with these serving.env strings (--set would read "false" as a YAML bool)."""
    out = profile.model_copy(deep=True)
    out.serving.env = {**out.serving.env, **env}
    return out


def test_no_gpu_everything_on_cpu() -> None:
    """No GPU (doctor sizes a profile against []): nothing is usable, the whole 18.1 GiB of text
    and the 9.551 GiB vision encoder run on CPU: 27.65 GiB. Every per-GPU figure is 0. Q4_K_M
    already, f16 cache: the only advice is the q8_0 cache."""
    r = check_fit(prof(), [])
    assert r.to_dict() | {"reason": "", "suggestion": ""} == {
        "verdict": "does_not_fit",
        "profile": "4090-q4",
        "backend": "ollama",
        "gpus_used": 0,
        "weights": "q4_K_M",
        "kv_cache_dtype": "f16",
        "per_gpu_budget_gib": 0.0,
        "weights_per_gpu_gib": 0.0,
        "overhead_per_gpu_gib": 0.0,
        "kv_cache_gib": 0.0,
        "kv_tokens": 32768,
        "requested_context": 32768,
        "max_context": 0,
        "full_length_concurrency": 0.0,
        "cpu_offload_gib": 27.65,
        "reason": "",
        "suggestion": "",
    }
    assert r.reason == (
        "Does not fit on GPU: 27.7 GiB would run on CPU. Q4_K_M weights (13.1 GiB) and a "
        "32,768-token f16 KV cache (5.0 GiB) need 18.1 GiB with the compute graph; 0.0 GiB is "
        "usable on no GPU, and the vision encoder (9.6 GiB) goes to CPU first."
    )
    assert r.suggestion == "Try --set kv_cache_dtype=fp8 (q8_0 KV cache, half the size)."


def test_no_gpu_with_a_q8_cache_has_nothing_left_to_try() -> None:
    r = check_fit(prof("serving.kv_cache_dtype=fp8"), [])
    assert r.kv_cache_dtype == "q8_0"
    assert r.suggestion == "Needs a GPU with more memory: Q4_K_M weights alone are 13.1 GiB."


def test_a_larger_tag_is_pointed_to_q4() -> None:
    """FP16 text (23.57e9 x 2 B = 43.9 GiB) spills on a 4090 whatever the cache: the advice
    names the Q4_K_M tag and, with the f16 cache, the q8_0 one."""
    r = check_fit(prof("model.ollama_tag=mistral-small3.1:24b-instruct-2503-fp16"), [RTX4090])
    assert r.verdict == "does_not_fit"
    assert "FP16 weights (43.9 GiB)" in r.reason
    assert r.suggestion == (
        "Try --set kv_cache_dtype=fp8 (q8_0 KV cache, half the size) or the Q4_K_M tag "
        "mistral-small3.1:24b-instruct-2503-q4_K_M (13.1 GiB)."
    )


def test_tiny_room_still_reports_the_context_that_fits() -> None:
    """A 15,000 MiB card: (15,000 - 479 - 457) MiB = 13.734 GiB usable; room for cache
    13.734 - 0.5 - 13.1 = 0.134 GiB = 880 tokens of 160 KiB. 32k does not fit; the largest
    all-GPU context is 880 (too short to advise as max_model_len, under 2,048)."""
    r = check_fit(prof(), [15000])
    assert r.verdict == "does_not_fit"
    assert r.max_context == 880
    assert r.suggestion == "Try --set kv_cache_dtype=fp8 (q8_0 KV cache, half the size)."


@pytest.mark.parametrize("value", ["0", "false", "no", "off", " OFF "])
def test_flash_attention_off(value: str) -> None:
    """OLLAMA_FLASH_ATTENTION off: the cache stays f16 even if q8_0 is asked for, and the graph
    grows by 65,536 B per token: 0.5 + 32,768 x 65,536 B = 2.5 GiB. Text: 13.1 + 5.0 + 2.5 =
    20.6 of 23.074 GiB (2.474 left, under the 9.551 GiB vision encoder: tight). Overhead per GPU
    0.4463 + 2.5 = 2.95 GiB. Largest context: (23.074 - 0.5 - 13.1) GiB / (163,840 + 65,536) B
    = 9.4742 GiB / 229,376 B = 44,350 tokens."""
    r = check_fit(
        with_env(prof("serving.kv_cache_dtype=fp8"), OLLAMA_FLASH_ATTENTION=value), [RTX4090]
    )
    assert r.kv_cache_dtype == "f16"
    assert r.verdict == "tight"
    assert r.overhead_per_gpu_gib == 2.95
    assert r.max_context == 44350


@pytest.mark.parametrize("value", ["1", "true", "yes", ""])
def test_flash_attention_on(value: str) -> None:
    """Anything but an explicit off keeps it on: q8_0 cache, 32,768 x 81,920 x 34/32 B = 2.656 GiB."""
    r = check_fit(
        with_env(prof("serving.kv_cache_dtype=fp8"), OLLAMA_FLASH_ATTENTION=value), [RTX4090]
    )
    assert (r.kv_cache_dtype, r.kv_cache_gib) == ("q8_0", 2.66)


def test_q4_0_cache_from_the_environment() -> None:
    """OLLAMA_KV_CACHE_TYPE=q4_0 wins over kv_cache_dtype: 32,768 x 46,080 B = 1.406 GiB."""
    r = check_fit(prof("serving.env.OLLAMA_KV_CACHE_TYPE=q4_0"), [RTX4090])
    assert (r.kv_cache_dtype, r.kv_cache_gib) == ("q4_0", 1.41)
    with pytest.raises(ConfigError):
        check_fit(prof("serving.env.OLLAMA_KV_CACHE_TYPE=q5_1"), [RTX4090])


@pytest.mark.parametrize(
    ("vram", "tokens"),
    [(22.99, 4096), (23.0, 32768), (46.99, 32768), (47.0, 131072), (200.0, 131072)],
)
def test_ollama_default_context_borders(vram: float, tokens: int) -> None:
    """FACTS: 4k under 23 GiB, 32k under 47 GiB, 256k above (clamped to the model's 131,072)."""
    assert ollama_default_context(vram) == tokens


def test_auto_context_on_a_48_gib_card() -> None:
    """max_model_len auto on a 49,152 MiB card: Ollama sees (49,152 - 479) / 1024 = 47.53 GiB,
    not under 47: its default is 256k, clamped to 131,072 tokens (20 GiB of f16 cache)."""
    r = check_fit(prof("serving.max_model_len=auto"), [49152])
    assert r.requested_context == 131072


def test_free_memory_is_what_ollama_uses() -> None:
    """20,000 MiB free on a 4090: Ollama sees min(20,000, 24,085) = 19.531 GiB, 19.085 usable;
    text 18.6 GiB fits with 0.485 GiB left (vision on CPU: tight). Weights per GPU: the text
    13.1 only (the projector is on CPU); overhead 0.4463 + 0.5 = 0.95 GiB."""
    r = check_fit(prof(), [RTX4090], free_mib=[20000])
    assert r.verdict == "tight"
    assert r.per_gpu_budget_gib == 19.53
    assert (r.weights_per_gpu_gib, r.overhead_per_gpu_gib) == (13.1, 0.95)
    assert r.cpu_offload_gib == 9.55
    assert "fit in 19.1 GiB usable on 1 GPU" in r.reason


def test_little_spare_beside_the_vision_encoder_is_tight() -> None:
    """A 30,274 MiB card: (30,274 - 479 - 457) MiB = 28.650 GiB usable; text 18.6 leaves 10.050,
    enough for the 9.551 GiB vision encoder with 0.499 GiB to spare (under 1 GiB: tight).
    Weights per GPU 13.1 + 0.751 (projector) = 13.85; overhead 0.4463 + 0.5 + 8.8 = 9.75."""
    r = check_fit(prof(), [30274])
    assert r.verdict == "tight"
    assert (r.weights_per_gpu_gib, r.overhead_per_gpu_gib, r.cpu_offload_gib) == (13.85, 9.75, 0.0)
    assert r.reason.endswith(
        "with the vision encoder (9.6 GiB), 0.5 GiB to spare; but only 0.5 GiB is left over, and "
        "Ollama's estimates can be off."
    )
    assert r.suggestion == "--set kv_cache_dtype=fp8 (Ollama q8_0 KV cache) halves the cache."


def test_fits_with_room_to_spare() -> None:
    """An H100: (81,080 - 457) MiB = 78.733 GiB usable; 78.733 - 18.6 - 9.551 = 50.58 to spare."""
    r = check_fit(prof(), [H100])
    assert r.verdict == "fits"
    assert r.reason == (
        "Q4_K_M weights (13.1 GiB) and a 32,768-token f16 KV cache (5.0 GiB) fit in 78.7 GiB "
        "usable on 1 GPU with the vision encoder (9.6 GiB), 50.6 GiB to spare."
    )
    assert r.suggestion is None


def test_too_short_a_context_for_one_image() -> None:
    """2,048 tokens with one image of up to 3,080: no room for text; keep (2,048 - 1,024) // 3,080
    = 0 images."""
    r = check_fit(prof("serving.max_model_len=2048"), [H100])
    assert r.verdict == "tight"
    assert r.suggestion == "--set images_per_prompt=0, or a longer max_model_len."


def test_context_length_in_the_profile_env() -> None:
    """serving.env.OLLAMA_CONTEXT_LENGTH=65536 is what Ollama uses: 10.0 GiB of cache, 23.6 >
    23.074 GiB: 0.526 GiB of text + 9.551 vision = 10.08 GiB on CPU."""
    r = check_fit(prof("serving.env.OLLAMA_CONTEXT_LENGTH=65536"), [RTX4090])
    assert (r.requested_context, r.cpu_offload_gib) == (65536, 10.08)


@pytest.mark.parametrize(
    ("context", "overhead", "advice"),
    [
        (2048, 857314737, "Try --set max_model_len=2048 or --set kv_cache_dtype=fp8 (q8_0 KV "
         "cache, half the size)."),
        (256, 1150916017, "Try --set kv_cache_dtype=fp8 (q8_0 KV cache, half the size)."),
    ],
    ids=["2048", "256"],
)  # fmt: skip
def test_largest_context_at_its_borders(context: int, overhead: int, advice: str) -> None:
    """A 16,000 MiB card: (16,000 - 479 - 457) MiB = 14.7109375 GiB usable before
    OLLAMA_GPU_OVERHEAD. Text-only 4090-q4 (no image tokens). An overhead of
    (14.7109375 - 13.6) GiB - context x 163,840 B - 1,000 B leaves room for exactly `context`
    tokens of 160 KiB (and 1,000 bytes): 2,048 is still offered as max_model_len (the least
    worth offering), 256 is still a context (the least reported) but not worth offering."""
    p = with_env(
        prof("serving.vision=false", "serving.images_per_prompt=0"),
        OLLAMA_GPU_OVERHEAD=str(overhead),
    )
    r = check_fit(p, [16000])
    assert (r.verdict, r.max_context) == ("does_not_fit", context)
    assert r.suggestion == advice
