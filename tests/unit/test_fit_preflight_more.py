"""The shared fit pieces (msmall.fit) and the fit half of the serve preflight: what is
recommended on ties, when a refusal names another profile, what `--force` keeps, what is skipped
and why. Numbers by hand from FACTS.md / docs/memory.md, as in tests/unit/test_fit_exact.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msmall import preflight as pf
from msmall.backends import PlanOptions, build_plan
from msmall.errors import EnvironmentProblem
from msmall.hardware import GpuInfo, Inventory
from msmall.preflight import check_fit, recommend
from msmall.profiles import load_profile, parse_set
from msmall.progress import RecordingReporter

GiB = 2**30
RTX4090, H100 = 24564, 81559
FP8_REPO = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-FP8-dynamic"
W4_REPO = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16"
TAG = "mistral-small3.1:24b-instruct-2503-"


def prof(name: str, *sets: str):
    return load_profile(name, parse_set(list(sets)))


def _profiles(tmp_path: Path, specs: dict[str, str]):
    out = []
    for name, body in specs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(body, encoding="utf-8")
        out.append(load_profile(str(path)))
    return out


VLLM_FP8 = (
    f"extends: h100-bf16-vision\nmodel:\n  hf_repo: {FP8_REPO}\n  hf_format: hf\n  weights: fp8\n"
)
VLLM_W4 = (
    f"extends: h100-bf16-vision\nmodel:\n  hf_repo: {W4_REPO}\n  hf_format: hf\n  weights: w4a16\n"
)
VLLM_BF16 = "extends: h100-bf16-vision\n"


def ollama(quant: str) -> str:
    return f"extends: h100-bf16-vision\nbackend: ollama\nmodel:\n  ollama_tag: {TAG}{quant}\n"


# ---------------------------------------------------------------------------------------------
# recommend(): equal precision is a tie, whichever engine's name the weights carry


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (VLLM_BF16, ollama("fp16")),
        (ollama("fp16"), VLLM_BF16),
        (VLLM_FP8, ollama("q8_0")),
        (ollama("q8_0"), VLLM_FP8),
        (VLLM_W4, ollama("q4_K_M")),
        (ollama("q4_K_M"), VLLM_W4),
    ],
    ids=["bf16-fp16", "fp16-bf16", "fp8-q8", "q8-fp8", "w4a16-q4", "q4-w4a16"],
)
def test_equal_bits_tie_and_the_first_name_wins(tmp_path: Path, first: str, second: str) -> None:
    """BF16 = FP16 = 16 bits, FP8 = Q8_0 = 8, W4A16 = Q4_K_M = 4. On an H100 both of each pair
    fit at 65,536 tokens with vision, both with the full 131,072 as the largest context (vLLM
    BF16: 24.57 GiB = 161,008 tokens; Ollama FP16: (78.733 - 0.5 - 43.9) GiB / 160 KiB = 224k),
    one GPU each: nothing but the name differs, so "a" wins in either order."""
    profiles = _profiles(tmp_path, {"a": first, "b": second})
    reports = [check_fit(p, [H100]) for p in profiles]
    assert [(r.verdict, r.requested_context, r.max_context) for r in reports] == [
        ("fits", 65536, 131072)
    ] * 2
    assert recommend(profiles, [H100]) == "a"


def test_needs_gpu_and_gpus_needed() -> None:
    assert pf.needs_gpu(prof("h100-bf16-vision"))
    assert not pf.needs_gpu(prof("h100-bf16-vision", "hardware.gpu_count=0"))
    assert not pf.needs_gpu(prof("demo"))
    assert pf.gpus_needed(prof("2x4090-fp8-vision")) == 2
    assert pf.gpus_needed(prof("h100-bf16-vision", "hardware.gpu_count=3")) == 3


def test_alternatives_only_replace_a_no_context_refusal() -> None:
    """65,536 tokens of W4A16 on a 4090 under vLLM does not fit, but 30k-odd tokens would: its
    own advice (a shorter max_model_len) stays even when other profiles are offered."""
    shipped = [prof(n) for n in ("h100-bf16-vision", "2x4090-fp8-vision", "4090-q4")]
    r = check_fit(
        prof("4090-q4", "serving.max_model_len=65536"), [RTX4090], "vllm", alternatives=shipped
    )
    assert r.verdict == "does_not_fit" and r.max_context > 0
    assert (r.suggestion or "").startswith("--set max_model_len=")


def test_simulator_report() -> None:
    """The simulator needs no GPU: every memory figure 0, the whole context served once."""
    r = check_fit(prof("demo"), [])
    assert r.to_dict() == {
        "verdict": "fits",
        "profile": "demo",
        "backend": "simulator",
        "gpus_used": 0,
        "weights": r.weights,
        "kv_cache_dtype": r.kv_cache_dtype,
        "per_gpu_budget_gib": 0.0,
        "weights_per_gpu_gib": 0.0,
        "overhead_per_gpu_gib": 0.0,
        "kv_cache_gib": 0.0,
        "kv_tokens": r.requested_context,
        "requested_context": r.requested_context,
        "max_context": 131072,
        "full_length_concurrency": 1.0,
        "cpu_offload_gib": 0.0,
        "reason": "The simulator needs no GPU.",
        "suggestion": None,
    }


@pytest.mark.parametrize(("context", "verdict"), [(4104, "fits"), (4103, "tight")])
def test_one_image_needs_1024_tokens_of_text_beside_it(context: int, verdict: str) -> None:
    """One image of up to 3,080 tokens + 1,024 of text = 4,104: a 4,104-token context is enough,
    4,103 is tight (on an H100 the cache holds 161,008 tokens, so only the image rule speaks)."""
    r = check_fit(
        prof("h100-bf16-vision", f"serving.max_model_len={context}", "serving.images_per_prompt=1"),
        [H100],
    )
    assert r.verdict == verdict


def test_text_only_short_context_has_no_image_note() -> None:
    """vision off: no image tokens at all, so even 1,024 tokens carry no image warning."""
    r = check_fit(
        prof("h100-bf16-vision", "serving.vision=false", "serving.max_model_len=1024"), [H100]
    )
    assert r.verdict == "fits"


# ---------------------------------------------------------------------------------------------
# The preflight of `msmall serve`


def _inv(*sizes: int | None) -> Inventory:
    return Inventory(
        gpus=[GpuInfo(index=i, name=f"GPU{i}", memory_total_mib=s) for i, s in enumerate(sizes)],
        driver_version="580.65.06",
        cuda_version="13.0",
        source="nvml",
    )


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OLLAMA_GPU_OVERHEAD", raising=False)
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH", raising=False)


def _preflight(p, inv, *, force=False, others=None, rec=None):
    plan = build_plan(p, PlanOptions(vllm_version="0.33.0", detect_installed=False))
    return pf.preflight(
        p, plan, inv, force=force, reporter=rec or RecordingReporter(), others=others
    )


def test_fits_is_reported_as_info_and_not_forced() -> None:
    rec = RecordingReporter()
    result = _preflight(prof("h100-bf16-vision"), _inv(H100), others=[], rec=rec)
    assert (result.verdict, result.forced) == ("fits", False)
    assert result.to_dict() == {"verdict": "fits", "reason": result.reason, "forced": False}
    assert result.reason.startswith("memory check (")
    assert rec.infos == [result.reason] and rec.warnings == []


def test_tight_is_a_warning_with_the_suggestion() -> None:
    """128k BF16 on an H100: 161,008 / 131,072 = 1.23 requests, tight; the advice is the FP8
    cache."""
    rec = RecordingReporter()
    result = _preflight(
        prof("h100-bf16-vision", "serving.max_model_len=131072"), _inv(H100), others=[], rec=rec
    )
    assert result.verdict == "tight"
    assert rec.warnings == [
        result.reason + " --set kv_cache_dtype=fp8 doubles the KV cache (about 322,016 tokens)."
    ]


def test_refusal_fix_is_the_fits_own_suggestion() -> None:
    """BF16 on a 4090 with no other profile to offer: the fix is the fit's advice."""
    with pytest.raises(EnvironmentProblem) as info:
        _preflight(prof("h100-bf16-vision"), _inv(RTX4090), others=[])
    assert info.value.fix == (
        "Use smaller weights: fp8 (about 24 GiB) or w4a16 (about 14 GiB), or a GPU with at least "
        "63 GiB. Or --force to launch anyway."
    )


def test_refusal_names_a_shipped_profile_that_fits_by_default() -> None:
    """others=None: every known profile is offered; on one 4090 the best of the same model is
    4090-q4 (Ollama Q4_K_M, 32k: 18.6 of 23.074 GiB)."""
    with pytest.raises(EnvironmentProblem) as info:
        _preflight(prof("h100-bf16-vision"), _inv(RTX4090))
    assert (info.value.fix or "").startswith("Use the profile 4090-q4, which fits these GPUs.")


def test_force_launches_anyway_and_keeps_auto() -> None:
    """--force on a refusal: a warning, verdict does_not_fit, forced; max_model_len auto stays
    auto (there is no context that fits to resolve it to)."""
    rec = RecordingReporter()
    p = prof("h100-bf16-vision", "serving.max_model_len=auto")
    result = _preflight(p, _inv(RTX4090), force=True, others=[], rec=rec)
    assert (result.verdict, result.forced) == ("does_not_fit", True)
    assert result.profile.serving.max_model_len == "auto"
    assert len(rec.warnings) == 1
    assert rec.warnings[0].endswith("(--force: launching anyway; expect an out-of-memory failure)")


def test_auto_is_resolved_to_the_largest_context_that_fits() -> None:
    rec = RecordingReporter()
    p = prof("h100-bf16-vision", "serving.max_model_len=auto")
    result = _preflight(p, _inv(H100), others=[], rec=rec)
    assert result.profile.serving.max_model_len == 131072
    assert p.serving.max_model_len == "auto"  # the caller's profile is not changed
    assert rec.infos[-1].startswith("max_model_len auto -> 131,072 tokens")


def test_too_few_gpus_for_tensor_parallel() -> None:
    p = prof("2x4090-fp8-vision")
    with pytest.raises(EnvironmentProblem) as info:
        _preflight(p, _inv(RTX4090), others=[])
    assert info.value.message == (
        "profile 2x4090-fp8-vision runs tensor parallel 2 and needs 2 GPUs; this machine has 1 "
        "(GPU0 (24,564 MiB))"
    )
    assert info.value.fix == "Use fewer GPUs, or --force to try anyway."
    forced = _preflight(p, _inv(RTX4090), force=True, others=[])
    assert (forced.verdict, forced.forced) == ("does_not_fit", True)


@pytest.mark.parametrize(
    ("profile", "sets", "inv", "reason"),
    [
        ("demo", [], _inv(H100), "simulator needs no GPU"),
        ("h100-bf16-vision", ["hardware.gpu_count=0"], _inv(H100), "vLLM needs no GPU"),
        (
            "h100-bf16-vision",
            [],
            _inv(),
            "no GPU readable (none listed): skipping the memory check",
        ),
        ("h100-bf16-vision", [], _inv(None), "report no memory size: skipping the memory check"),
    ],
    ids=["simulator", "gpu_count-0", "no-gpu", "no-memory-size"],
)
def test_skipped(profile: str, sets: list[str], inv: Inventory, reason: str) -> None:
    result = _preflight(prof(profile, *sets), inv, others=[])
    assert result.verdict == "skipped"
    assert reason in result.reason
    assert result.forced is False


def test_a_flag_without_its_value_is_read_as_bare() -> None:
    """`--max-num-batched-tokens` followed by another flag has no value (vLLM itself would stop
    at argparse): the fit keeps the default batch (8,192 on an H100) instead of reading the next
    flag as a number; --enforce-eager still drops the 1.0 GiB of CUDA graphs:
    overhead 0.75 + 8,192 x 237,568 B (1.8125) = 2.5625 GiB."""
    import json

    args = json.dumps(["--max-num-batched-tokens", "--enforce-eager"])
    r = check_fit(prof("h100-bf16-vision", f"extra_args={args}"), [H100])
    assert r.overhead_per_gpu_gib == 2.56


def test_docs_table_cells() -> None:
    """The cells of docs/memory.md's table. 4090-q4 (Ollama) on a 4090: text fits, vision on CPU
    (tight); largest context (23.074 - 0.5 - 13.1) GiB = 9.4742 GiB / 160 KiB = 62,090 tokens. Two slots: it
    spills (does not fit), the vision note is not added; the context 31,045 is still shown.
    TP 2 on one GPU: what it needs."""
    assert pf._cell(check_fit(prof("4090-q4"), [RTX4090])) == "tight (vision on CPU), max 62,090"
    two = check_fit(prof("4090-q4", "serving.ollama_num_parallel=2"), [RTX4090])
    assert two.cpu_offload_gib > 0
    assert pf._cell(two) == "does not fit, max 31,045"
    assert pf._cell(check_fit(prof("2x4090-fp8-vision"), [RTX4090])) == "needs 2 GPUs"
    assert pf._cell(check_fit(prof("h100-bf16-vision"), [H100])) == "fits, max 131,072"
    assert pf._cell(check_fit(prof("h100-bf16-vision"), [RTX4090])) == "does not fit"
