"""The memory fit, with every expected number worked out by hand.

Inputs are FACTS.md's and docs/memory.md's, never fit.py's constants:
  GPU totals (nvidia-smi memory.total): RTX 4090 24,564 MiB (FACTS), L40S 46,068, H100 81,559.
  CUDA sees memory.total - 479 MiB (docs/memory.md §3.1, H100-CSV).
  Parameters (FACTS): text 23.57 B, vision 0.40 B, projector 0.036 B; embedding + untied head
  2 x 131,072 x 5,120 = 1,342,177,280 stay BF16; the other 22,227,822,720 text weights shrink.
    BF16 + vision   24.006e9 x 2 B                                   = 44.716 GiB
    FP8 + vision    22.2278e9 x 1 + (1.3422e9 + 0.436e9) x 2 = 25.784e9 B = 24.013 GiB
  KV per token (FACTS): 2 x 40 x 8 x 128 values = 81,920; x 2 B (BF16) = 160 KiB, / TP per GPU;
  vLLM allocates 16-token blocks.
  vLLM overhead per GPU (docs/memory.md §3.3): 0.5 context + 0.25 fixed + batched x (196,608 B /
  TP + 40,960 B) + 0.5 under TP + 1.0 CUDA graphs (none with --enforce-eager); default batch
  2,048 tokens, 4,096 from 40 GiB, 8,192 from 70 GiB.
  Ollama (docs/memory.md §4): 457 MiB kept free per GPU + OLLAMA_GPU_OVERHEAD bytes; 0.5 GiB
  graph per GPU; Q4_K_M text 13.1 GiB; vision 769.3 MiB + 8.8 GiB graph, offloaded first; each
  parallel slot holds a full context of cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall import preflight as _preflight
from msmall.backends import PlanOptions, build_plan
from msmall.errors import EnvironmentProblem
from msmall.hardware import GpuInfo, Inventory
from msmall.preflight import check_fit, recommend
from msmall.profiles import load_profile, parse_set


def preflight(prof, plan, *, force, reporter, inventory):
    """The serve preflight on a given inventory (msmall.preflight takes it positionally)."""
    return _preflight.preflight(prof, plan, inventory, force=force, reporter=reporter)


GiB = 2**30
RTX4090, L40S, H100 = 24564, 46068, 81559


def prof(name: str, *sets: str):
    return load_profile(name, parse_set(list(sets)))


def blocks(kv_gib: float, bytes_per_token: int) -> int:
    """Tokens in whole 16-token blocks (vLLM's block size)."""
    return int(kv_gib * GiB // (bytes_per_token * 16)) * 16


# ---------------------------------------------------------------------------------------------
# vLLM


@pytest.mark.parametrize(
    "gpus", [[L40S, RTX4090], [RTX4090, L40S]], ids=["L40S-first", "4090-first"]
)
def test_mixed_gpus_the_smallest_sets_the_budget(gpus: list[int]) -> None:
    """2x4090-fp8-vision on an L40S + an RTX 4090 (TP 2, 32k, BF16 cache).

    Budget  = 0.92 x (24,564 - 479) / 1024 = 0.92 x 23.5205 = 21.639 GiB (the 4090's, either order)
    Weights = 24.013 / 2                                    = 12.007 GiB per GPU
    Overhead= 0.5 + 0.25 + 2048 x (98,304 + 40,960) B + 0.5 + 1.0 = 2.75 + 0.2656 = 2.516 GiB
    KV      = 21.639 - 12.007 - 2.516                        = 7.117 GiB per GPU
    Tokens  = 7.117 GiB / 81,920 B, in 16s                   = 93,264 -> 2.85 x 32,768
    """
    r = check_fit(prof("2x4090-fp8-vision"), gpus)
    assert r.verdict == "fits"
    assert r.per_gpu_budget_gib == 21.64
    assert r.weights_per_gpu_gib == 12.01
    assert r.overhead_per_gpu_gib == 2.52
    assert r.kv_cache_gib == 7.12
    assert r.kv_tokens == 93264
    assert r.full_length_concurrency == 2.85
    assert "0.92 x 23.5 GiB = 21.6 GiB per GPU" in r.reason


def test_tensor_parallel_uses_the_first_gpus_listed() -> None:
    """TP 2 on [L40S, L40S, 4090] takes the two L40S (the caller lists GPUs in gpu_ids order).

    CUDA total = (46,068 - 479) / 1024 = 44.521 GiB; budget 0.92 x 44.521 = 40.959 GiB.
    At 44.5 GiB vLLM batches 4,096 tokens: 0.5 + 0.25 + 4096 x 139,264 B (0.53125) + 0.5 + 1.0
    = 2.781 GiB. KV = 40.959 - 12.007 - 2.781 = 26.171 GiB per GPU = 343,024 tokens (81,920 B
    each), capped at 131,072 for the context.
    """
    r = check_fit(prof("2x4090-fp8-vision"), [L40S, L40S, RTX4090])
    expected_kv = 0.92 * (46068 - 479) / 1024 - 25.784178e9 / GiB / 2 - 2.78125
    assert r.kv_cache_gib == round(expected_kv, 2) == 26.17
    assert r.kv_tokens == blocks(expected_kv, 81920)
    assert r.max_context == 131072
    assert r.gpus_used == 2


H100_BUDGET = 0.92 * (81559 - 479) / 1024  # 72.846 GiB
BF16_VISION = 24.006e9 * 2 / GiB  # 44.716 GiB


@pytest.mark.parametrize(
    ("extra_args", "overhead"),
    [
        # default on an 80 GB card: 8,192 tokens x 237,568 B = 1.8125 GiB
        ([], 0.75 + 1.8125 + 1.0),
        (["--max-num-batched-tokens", "2048"], 0.75 + 0.453125 + 1.0),
        (["--max_num_batched_tokens=2048"], 0.75 + 0.453125 + 1.0),
        (["--max-num-batched-tokens=16384"], 0.75 + 3.625 + 1.0),
        (["--enforce-eager"], 0.75 + 1.8125),
        (["--enforce_eager", "--max-num-batched-tokens", "2048"], 0.75 + 0.453125),
    ],
    ids=["default", "batch-2048", "underscores", "batch-16384", "eager", "eager-2048"],
)
def test_extra_args_that_change_memory(extra_args: list[str], overhead: float) -> None:
    """h100-bf16-vision (64k): KV = 72.846 - 44.716 - overhead; 163,840 B per token.

    Overheads: 0.5 + 0.25 = 0.75 fixed, batched x 237,568 B (196,608 + 40,960, TP 1), + 1.0 GiB
    of CUDA graphs unless --enforce-eager. Default: 0.75 + 1.8125 + 1.0 = 3.5625 -> KV 24.57 GiB,
    161,008 tokens (docs/memory.md's worked example).
    """
    import json

    r = check_fit(prof("h100-bf16-vision", f"extra_args={json.dumps(extra_args)}"), [H100])
    kv = H100_BUDGET - BF16_VISION - overhead
    assert r.overhead_per_gpu_gib == round(overhead, 2)
    assert r.kv_cache_gib == round(kv, 2)
    assert r.kv_tokens == blocks(kv, 163840)
    if not extra_args:
        assert (r.kv_tokens, r.full_length_concurrency) == (161008, 2.46)


def test_advice_names_the_smallest_gpu_that_fits_one() -> None:
    """BF16 + vision, 64k, on one 4090 does not fit; which single GPU would?

    A card of S GiB past 40 GiB batches 4,096 tokens: overhead 0.75 + 0.90625 + 1.0 = 2.656 GiB.
    One 65,536-token request needs 65,536 x 160 KiB = 10.0 GiB of KV:
    0.92 x (S - 0.468) >= 44.716 + 2.656 + 10.0 = 57.372  ->  S >= 62.83  ->  63 GiB.
    And indeed: 62 GiB does not fit, 63 GiB does.
    """
    r = check_fit(prof("h100-bf16-vision"), [RTX4090])
    assert r.verdict == "does_not_fit"
    assert r.suggestion is not None and "a GPU with at least 63 GiB" in r.suggestion
    assert check_fit(prof("h100-bf16-vision"), [62 * 1024]).verdict == "does_not_fit"
    assert check_fit(prof("h100-bf16-vision"), [63 * 1024]).verdict != "does_not_fit"


def test_advice_names_the_smallest_gpus_that_fit_two() -> None:
    """BF16 + vision, 32k, TP 2 on two 4090s: FACTS says it does not fit; what would?

    Per GPU: weights 44.716 / 2 = 22.358 GiB; overhead 0.75 + 2048 x 139,264 B (0.2656) + 0.5 +
    1.0 = 2.516 GiB; 32,768 tokens x 81,920 B = 2.5 GiB of KV.
    0.92 x (S - 0.468) >= 22.358 + 2.516 + 2.5 = 27.374  ->  S >= 30.22  ->  31 GiB each.
    """
    r = check_fit(prof("2x4090-bf16-vision"), [RTX4090, RTX4090])
    assert r.verdict == "does_not_fit"
    assert "2 GPUs with at least 31 GiB each" in (r.suggestion or "")
    assert "43.3 GiB on 2 GPUs" in r.reason  # 2 x 21.639
    assert check_fit(prof("2x4090-bf16-vision"), [30 * 1024] * 2).verdict == "does_not_fit"
    assert check_fit(prof("2x4090-bf16-vision"), [31 * 1024] * 2).verdict != "does_not_fit"


# ---------------------------------------------------------------------------------------------
# Ollama: 4090-q4 (Q4_K_M, 32k, f16 cache with flash attention) on one RTX 4090.
# Usable = (24,564 - 479 - 457) MiB = 23,628 MiB = 23.074 GiB; graph 0.5 GiB; vision 9.551 GiB.


def test_ollama_one_slot_text_on_gpu_vision_on_cpu() -> None:
    """13.1 + 32,768 x 160 KiB (5.0) + 0.5 = 18.6 GiB; 23.074 - 18.6 = 4.474 GiB left, less than
    the 9.551 GiB vision encoder: text on GPU, images on CPU (tight, 9.55 GiB offloaded)."""
    r = check_fit(prof("4090-q4"), [RTX4090])
    assert r.verdict == "tight"
    assert r.cpu_offload_gib == 9.55
    assert r.kv_tokens == 32768
    assert "23.1 GiB usable on 1 GPU" in r.reason
    assert r.overhead_per_gpu_gib == round(457 / 1024 + 0.5, 2)  # 0.95


@pytest.mark.parametrize(
    "sets",
    [["serving.ollama_num_parallel=2"], ["serving.env.OLLAMA_NUM_PARALLEL=2"]],
    ids=["profile", "env"],
)
def test_ollama_parallel_slots_each_hold_a_full_context(sets: list[str]) -> None:
    """2 slots x 32,768 tokens x 160 KiB = 10.0 GiB: 13.1 + 10.0 + 0.5 = 23.6 > 23.074 GiB.

    Spill = 0.526 GiB of text, plus the 9.551 GiB vision encoder = 10.08 GiB on CPU. The largest
    context that keeps text on GPU: (23.074 - 0.5 - 13.1) GiB / (2 x 160 KiB) = 31,045 tokens,
    advised as 30,720 (a multiple of 1,024).
    """
    r = check_fit(prof("4090-q4", *sets), [RTX4090])
    assert r.verdict == "does_not_fit"
    assert r.kv_tokens == 65536
    assert r.cpu_offload_gib == 10.08
    assert "32,768-token x 2 slots" in r.reason
    room = (24564 - 479 - 457) / 1024 - 0.5 - 13.1
    assert r.max_context == int(room * GiB // (2 * 163840)) == 31045
    assert "--set max_model_len=30720" in (r.suggestion or "")


@pytest.mark.parametrize(
    ("overhead_bytes", "verdict", "usable"),
    [(2 * GiB, "tight", "21.1"), (5 * GiB, "does_not_fit", "18.1")],
    ids=["2GiB", "5GiB"],
)
def test_ollama_gpu_overhead_is_kept_free(overhead_bytes: int, verdict: str, usable: str) -> None:
    """OLLAMA_GPU_OVERHEAD bytes come off every GPU: 23.074 - 2 = 21.074 GiB usable (text still
    fits: 18.6 GiB); 23.074 - 5 = 18.074 < 18.6: text spills."""
    r = check_fit(prof("4090-q4", f"serving.env.OLLAMA_GPU_OVERHEAD={overhead_bytes}"), [RTX4090])
    assert r.verdict == verdict
    assert f"{usable} GiB is usable" in r.reason or f"{usable} GiB usable" in r.reason


# ---------------------------------------------------------------------------------------------
# gpu_ids: the fit is judged on the GPUs the profile names, through the preflight.


def _inventory() -> Inventory:
    return Inventory(
        gpus=[
            GpuInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_total_mib=RTX4090),
            GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", memory_total_mib=H100),
        ],
        driver_version="580.65.06",
        cuda_version="13.0",
        source="nvml",
    )


class _Quiet:
    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


def test_gpu_ids_choose_the_card_the_fit_is_judged_on() -> None:
    """h100-bf16-vision fits the H100 (index 1) and not the 4090 (index 0), whose budget is
    0.92 x 23.5 GiB = 21.6 GiB against 44.7 GiB of weights."""
    on_h100 = prof("h100-bf16-vision", "hardware.gpu_ids=1")
    options = PlanOptions(vllm_version="0.33.0", detect_installed=False)
    plan = build_plan(on_h100, options)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "1"
    preflight(on_h100, plan, force=False, reporter=_Quiet(), inventory=_inventory())

    on_4090 = prof("h100-bf16-vision", "hardware.gpu_ids=0")
    with pytest.raises(EnvironmentProblem) as info:
        preflight(
            on_4090, build_plan(on_4090, options), force=False, reporter=_Quiet(),
            inventory=_inventory(),
        )  # fmt: skip
    text = str(info.value) + " ".join(info.value.details or [])
    assert "RTX 4090" in text
    assert "0.92 x 23.5 GiB = 21.6 GiB" in text + (info.value.fix or "")


# ---------------------------------------------------------------------------------------------
# recommend(): vision, then precision, then context, then fits over tight, then fewer GPUs,
# then the first name.


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def _profiles(tmp_path: Path, specs: dict[str, str]):
    return [load_profile(str(_write(tmp_path, n, b))) for n, b in specs.items()]


H100_FP8 = "extends: h100-bf16-vision\nmodel:\n  hf_repo: {repo}\n  hf_format: hf\n  weights: fp8\n"
FP8_REPO = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-FP8-dynamic"


def test_recommend_same_but_name_takes_the_first_name(tmp_path: Path) -> None:
    body = "extends: h100-bf16-vision\n"
    profiles = _profiles(tmp_path, {"zeta": body, "alpha": body, "mid": body})
    assert recommend(profiles, [H100]) == "alpha"


def test_recommend_vision_beats_precision(tmp_path: Path) -> None:
    """BF16 text-only (43.9 GiB) and FP8 with vision both fit an H100: vision wins."""
    profiles = _profiles(
        tmp_path,
        {
            "a-bf16-text": "extends: h100-bf16-vision\nserving:\n  vision: false\n  images_per_prompt: 0\n",
            "b-fp8-vision": H100_FP8.format(repo=FP8_REPO),
        },
    )
    assert recommend(profiles, [H100]) == "b-fp8-vision"


def test_recommend_precision_beats_context(tmp_path: Path) -> None:
    """BF16 at 64k and FP8 at 128k both fit an H100: the higher precision wins."""
    profiles = _profiles(
        tmp_path,
        {
            "a-fp8-128k": H100_FP8.format(repo=FP8_REPO) + "serving:\n  max_model_len: 131072\n",
            "b-bf16-64k": "extends: h100-bf16-vision\n",
        },
    )
    assert recommend(profiles, [H100]) == "b-bf16-64k"


def test_recommend_longer_context_beats_fits_over_tight(tmp_path: Path) -> None:
    """BF16 at 128k is tight on an H100 (161,008 / 131,072 = 1.23 < 1.5 requests), at 64k it
    fits (2.46): the longer context still wins, verdict only breaks equal contexts."""
    profiles = _profiles(
        tmp_path,
        {
            "a-64k": "extends: h100-bf16-vision\n",
            "b-128k": "extends: h100-bf16-vision\nserving:\n  max_model_len: 131072\n",
        },
    )
    reports = {p.name: check_fit(p, [H100]).verdict for p in profiles}
    assert reports == {"a-64k": "fits", "b-128k": "tight"}
    assert recommend(profiles, [H100]) == "b-128k"


def test_recommend_fits_beats_tight_at_equal_context(tmp_path: Path) -> None:
    """128k BF16 on an H100: BF16 cache is tight (1.23 requests); with max_num_seqs the same
    but the 0.95 utilisation, KV = 0.95 x 79.18 - 44.716 - 3.5625 = 26.94 GiB = 176,576 tokens,
    1.35 requests: still tight. An FP8 cache doubles it (2.46+): fits. Same context, same
    precision, same vision: fits wins over tight, whatever the names."""
    profiles = _profiles(
        tmp_path,
        {
            "a-tight": "extends: h100-bf16-vision\nserving:\n  max_model_len: 131072\n",
            "b-fits": "extends: h100-bf16-vision\nserving:\n  max_model_len: 131072\n"
            "  kv_cache_dtype: fp8\n",
        },
    )
    assert {p.name: check_fit(p, [H100]).verdict for p in profiles} == {
        "a-tight": "tight",
        "b-fits": "fits",
    }
    assert recommend(profiles, [H100]) == "b-fits"


def test_recommend_fewer_gpus_at_equal_everything(tmp_path: Path) -> None:
    """FP8 at 128k on one H100 and on two: both capped at 131,072 tokens of context, both fit
    (one H100: 72.846 - 24.013 - 3.5625 = 45.27 GiB = 296,688 tokens, 2.26 requests): the
    one-GPU profile wins although its name sorts last."""
    one = H100_FP8.format(repo=FP8_REPO) + "serving:\n  max_model_len: 131072\n"
    two = (
        H100_FP8.format(repo=FP8_REPO)
        + "hardware:\n  gpu_count: 2\nserving:\n  max_model_len: 131072\n  tensor_parallel_size: 2\n"
    )
    profiles = _profiles(tmp_path, {"a-two": two, "z-one": one})
    assert all(
        check_fit(p, [H100, H100][: p.serving.tensor_parallel_size]).verdict == "fits"
        for p in profiles
    )
    assert recommend(profiles, [H100, H100]) == "z-one"
    # With one H100 only the one-GPU profile is a candidate at all.
    assert recommend(profiles, [H100]) == "z-one"


def test_recommend_skips_what_does_not_fit_and_the_simulator(tmp_path: Path) -> None:
    profiles = _profiles(
        tmp_path,
        {"a-sim": "extends: demo\n", "b-bf16": "extends: h100-bf16-vision\n"},
    )
    assert recommend(profiles, [RTX4090]) is None
    assert recommend(profiles, [H100]) == "b-bf16"


def test_ollama_q8_text_weights() -> None:
    """q8_0 stores 34 bytes per 32 weights (docs/memory.md §1): 23.57e9 x 34 / 32 B = 23.32 GiB,
    plus 32,768 x 160 KiB = 5.0 GiB of f16 cache and a 0.5 GiB graph on each of two L40S
    (usable (46,068 - 479 - 457) MiB = 44.07 GiB each): text fits, 13.7 GiB to spare after the
    9.55 GiB vision encoder."""
    r = check_fit(
        prof("4090-q4", "ollama_tag=mistral-small3.1:24b-instruct-2503-q8_0"), [L40S, L40S]
    )
    text = 23.57e9 * 34 / 32 / GiB
    assert r.weights == "q8_0"
    assert round(text, 2) == 23.32
    usable = 2 * (46068 - 479 - 457) / 1024
    spare = usable - 2 * 0.5 - text - 5.0 - (769.3 / 1024 + 8.8)
    assert f"{spare:.1f} GiB to spare" in r.reason
    assert f"Q8_0 weights ({text:.1f} GiB)" in r.reason


def test_no_room_means_no_tokens() -> None:
    """BF16 on one 4090: KV = 21.64 - 44.72 - 2.20 < 0, so the cache holds 0 tokens, not 1."""
    r = check_fit(prof("h100-bf16-vision"), [RTX4090])
    assert (r.kv_tokens, r.kv_cache_gib, r.max_context) == (0, 0.0, 0)
