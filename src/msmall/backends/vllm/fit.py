"""vLLM's memory rules: weights by variant, its utilisation budget, overhead, KV cache blocks.

The same rules hold for vLLM in a container (the vllm/vllm-openai image). Shared pieces (the
report, KV bytes per token, margins) are in msmall.fit; sources are cited as there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from msmall.errors import ConfigError
from msmall.fit import (
    DRIVER_RESERVED_MIB,
    GIB,
    KIB,
    MIN_TEXT_TOKENS,
    TIGHT_CONCURRENCY,
    TIGHT_KV_GIB,
    FitReport,
    default_model,
    extra_arg,
    gib2,
    image_note,
    image_tokens,
    k,
    kv_bytes_per_token,
    kv_tokens_for,
    model_of,
    round_down,
)
from msmall.models import ModelSpec

if TYPE_CHECKING:
    from msmall.profiles import Profile

# Bits per decoder-layer weight by vLLM weight variant. w4a16 (RedHatAI, GPTQ): 4-bit values plus
# a BF16 scale per group of 128, symmetric. AWQ: the same plus a packed 4-bit zero point per group.
LINEAR_BITS = {"bf16": 16.0, "fp8": 8.0, "w4a16": 4 + 16 / 128, "awq": 4 + (16 + 4) / 128}


def vllm_weights_gib(weights: str, vision: bool = True, model: ModelSpec | None = None) -> float:
    """GiB of weights vLLM loads for a variant (all GPUs together). BF16 = 44.72 GiB (FACTS).

    Without vision (`--limit-mm-per-prompt '{"image":0}'`) vLLM skips the vision tower.
    """
    if weights not in LINEAR_BITS:
        raise ConfigError(f"unknown weight variant '{weights}'", "Use bf16, fp8, w4a16 or awq.")
    spec = model or default_model()
    total = spec.linear_params * LINEAR_BITS[weights] / 8 + spec.embed_and_head_params * 2
    if vision:
        # Pixtral encoder + projector; the RedHatAI and OPEA builds leave them in BF16 too.
        total += spec.vision_params * 2
    return total / GIB


# vLLM allocates the cache in blocks of 16 tokens.
VLLM_BLOCK_TOKENS = 16


# vLLM, per GPU. CUDA context, cuBLAS workspaces and the allocator's non-torch memory: vLLM's
# profiler reports 0.35 GiB of "non_torch_memory" on a 3090 (vllm #10517); rounded up.
VLLM_CUDA_CONTEXT_GIB = 0.5


# NCCL buffers and the custom all-reduce workspace under tensor parallel. An assumption (not
# measured for this model): NCCL's default 4 MiB buffers x channels x peers, rounded up.
VLLM_TP_COMM_GIB = 0.5


# CUDA graphs. GLM-LOG: "Graph capturing finished in 7 secs, took 0.95 GiB" for a 9B model of
# the same depth (40 layers). vLLM up to 0.10 captured them AFTER sizing the KV cache, outside
# the budget, which is how AWQ-LOG's server crashed right after "GPU KV cache size"; msmall keeps
# them inside the budget so the server has the room either way.
VLLM_CUDA_GRAPHS_GIB = 1.0


# Peak activations of vLLM's profiling run: one forward pass of max_num_batched_tokens tokens.
# Per token: gate_up output (2 x FFN) plus the SiLU product (FFN) in BF16 = 192 KiB for FFN
# 32768, split by tensor parallel; hidden state, residual and QKV copies ~40 KiB, replicated.


ACTIVATION_REPLICATED_BYTES_PER_TOKEN = 40 * KIB


# Plus a fixed part: the vision encoder's dummy image, sampler logits, allocator slack.
# Calibrated so that AWQ-LOG's 35,392 tokens come out (see tests/test_fit.py).
ACTIVATION_FIXED_GIB = 0.25


# vLLM's default max_num_batched_tokens for the OpenAI server, by the GPU's CUDA memory
# (vllm/engine/arg_utils.py get_batch_defaults: 2048, 8192 from 70 GiB (not A100s, which we
# cannot tell apart here), 16384 from 160 GiB; newer builds add 4096 from 40 GiB).
VLLM_BATCHED_TOKEN_TIERS: tuple[tuple[float, int], ...] = (
    (0, 2048),
    (40, 4096),
    (70, 8192),
    (160, 16384),
)


def vllm_batched_tokens(cuda_total_gib: float) -> int:
    """vLLM's default max_num_batched_tokens for a GPU of this much CUDA memory."""
    return [tokens for floor, tokens in VLLM_BATCHED_TOKEN_TIERS if cuda_total_gib >= floor][-1]


def vllm_overhead_gib(
    tensor_parallel_size: int = 1,
    batched_tokens: int = 2048,
    cuda_graphs: bool = True,
    model: ModelSpec | None = None,
) -> float:
    """Per-GPU memory vLLM needs besides weights and KV cache."""
    sharded = 3 * (model or default_model()).ffn_size * 2
    per_token = sharded / tensor_parallel_size + ACTIVATION_REPLICATED_BYTES_PER_TOKEN
    overhead = VLLM_CUDA_CONTEXT_GIB + ACTIVATION_FIXED_GIB + batched_tokens * per_token / GIB
    if tensor_parallel_size > 1:
        overhead += VLLM_TP_COMM_GIB
    if cuda_graphs:
        overhead += VLLM_CUDA_GRAPHS_GIB
    return overhead


def vllm_kv_cache_gib(
    cuda_total_gib: float,
    utilization: float,
    weights_per_gpu_gib: float,
    tensor_parallel_size: int = 1,
    batched_tokens: int | None = None,
    cuda_graphs: bool = True,
    model: ModelSpec | None = None,
) -> float:
    """vLLM's rule: KV = utilization x total - weights - overhead, per GPU (may be negative).

    With the default batch size the overhead steps up at the 40/70/160 GiB tiers; a GPU just past
    a step never gets less than one just below it (it could run with the smaller batch), so more
    memory never means less cache.
    """
    if batched_tokens is not None:
        overhead = vllm_overhead_gib(tensor_parallel_size, batched_tokens, cuda_graphs, model)
        return utilization * cuda_total_gib - weights_per_gpu_gib - overhead
    best = -math.inf
    tiers = VLLM_BATCHED_TOKEN_TIERS
    for i, (floor, tokens) in enumerate(tiers):
        if cuda_total_gib < floor:
            break
        ceiling = tiers[i + 1][0] if i + 1 < len(tiers) else math.inf
        overhead = vllm_overhead_gib(tensor_parallel_size, tokens, cuda_graphs, model)
        kv = utilization * min(cuda_total_gib, ceiling) - weights_per_gpu_gib - overhead
        best = max(best, kv)
    return best


def fit_vllm(
    profile: Profile, gpus: Sequence[int], free: Sequence[int] | None, backend: str = "vllm"
) -> FitReport:
    """vLLM's verdict for a profile on GPUs with these totals (and free memory, when known)."""
    spec = model_of(profile)
    sv = profile.serving
    tp = sv.tensor_parallel_size
    util = sv.gpu_memory_utilization
    variant = profile.model.weights
    weights_gpu = vllm_weights_gib(variant, sv.vision, spec) / tp
    common = dict(
        profile=profile.name, backend=backend, weights=variant, kv_cache_dtype=sv.kv_cache_dtype
    )
    requested_fixed = sv.max_model_len if isinstance(sv.max_model_len, int) else 0

    if len(gpus) < tp:
        return FitReport(
            verdict="does_not_fit",
            gpus_used=len(gpus),
            per_gpu_budget_gib=0,
            weights_per_gpu_gib=gib2(weights_gpu),
            overhead_per_gpu_gib=0,
            kv_cache_gib=0,
            kv_tokens=0,
            requested_context=requested_fixed,
            max_context=0,
            full_length_concurrency=0,
            reason=f"Tensor parallel {tp} needs {tp} GPUs; {len(gpus)} given.",
            suggestion=f"Run it on {tp} GPUs, or pick a profile made for {len(gpus)} GPU"
            f"{'s' if len(gpus) != 1 else ''}.",
            **common,
        )

    used = list(gpus[:tp])
    # Ranks must hold the same shard and cache, so the smallest GPU sets the budget.
    cuda_total = (min(used) - DRIVER_RESERVED_MIB) / 1024
    budget = util * cuda_total
    kv_bpt = kv_bytes_per_token(sv.kv_cache_dtype, tp, spec)
    batched = extra_arg(profile, "--max-num-batched-tokens")
    graphs = extra_arg(profile, "--enforce-eager") is None
    kv_gib = vllm_kv_cache_gib(
        cuda_total, util, weights_gpu, tp, int(batched) if batched else None, graphs, spec
    )
    overhead = budget - weights_gpu - kv_gib
    kv_tokens = kv_tokens_for(kv_gib, kv_bpt, VLLM_BLOCK_TOKENS)
    max_context = min(kv_tokens, spec.max_context) if kv_tokens >= 256 else 0
    requested = requested_fixed or max_context
    concurrency = round(kv_tokens / requested, 2) if requested else 0.0
    gpus_word = f"{tp} GPUs" if tp > 1 else "the GPU"
    budget_txt = f"{util:g} x {cuda_total:.1f} GiB = {budget:.1f} GiB per GPU"
    figures = dict(
        gpus_used=tp,
        per_gpu_budget_gib=gib2(budget),
        weights_per_gpu_gib=gib2(weights_gpu),
        overhead_per_gpu_gib=gib2(overhead),
        kv_cache_gib=gib2(max(kv_gib, 0)),
        kv_tokens=kv_tokens,
        requested_context=requested,
        max_context=max_context,
        full_length_concurrency=concurrency,
        **common,
    )
    label = variant.upper()
    # Memory per GPU that would hold weights, overhead and one request (32k under "auto").
    need_per_gpu = _smallest_gpu_gib(
        weights_gpu, requested_fixed or 32768, kv_bpt, util, tp, int(batched) if batched else None,
        graphs, spec,
    )  # fmt: skip

    # vLLM checks free memory before anything else and refuses to start.
    if free is not None:
        for i, (total_mib, free_mib) in enumerate(zip(used, free[:tp], strict=True)):
            want = util * (total_mib - DRIVER_RESERVED_MIB) / 1024
            if free_mib / 1024 < want:
                fraction = min(
                    f / (t - DRIVER_RESERVED_MIB) for t, f in zip(used, free[:tp], strict=True)
                )
                lower = math.floor(fraction * 100) / 100 - 0.01
                return FitReport(
                    verdict="does_not_fit",
                    reason=(
                        f"vLLM refuses to start: GPU {i} has {free_mib / 1024:.1f} GiB free, less "
                        f"than gpu_memory_utilization {util:g} x "
                        f"{(total_mib - DRIVER_RESERVED_MIB) / 1024:.1f} GiB = {want:.1f} GiB."
                    ),
                    suggestion=_free_suggestion(profile, used, lower, backend),
                    **{**figures, "max_context": 0, "full_length_concurrency": 0.0},
                )

    # Under "auto" vLLM takes whatever fits; too little for any real prompt counts as no fit.
    if kv_gib <= 0 or max_context < (256 if requested_fixed else MIN_TEXT_TOKENS):
        split = f" ({weights_gpu * tp:.1f} GiB over tensor parallel {tp})" if tp > 1 else ""
        in_all = f" ({budget * tp:.1f} GiB on {tp} GPUs)" if tp > 1 else ""
        return FitReport(
            verdict="does_not_fit",
            reason=(
                f"{label} weights take {weights_gpu:.1f} GiB per GPU{split} plus {overhead:.1f} "
                f"GiB of overhead, but the budget is {budget_txt}{in_all}: no room for a KV cache."
            ),
            suggestion=_weights_suggestion(spec, variant, need_per_gpu, tp),
            **figures,
        )

    if requested_fixed and kv_tokens < requested_fixed:
        need_kv = requested_fixed * kv_bpt / GIB
        return FitReport(
            verdict="does_not_fit",
            reason=(
                f"One {k(requested_fixed)}-token request needs {need_kv:.1f} GiB of KV cache per "
                f"GPU, but only {kv_gib:.1f} GiB ({k(kv_tokens)} tokens) is left on {gpus_word} "
                f"after {weights_gpu:.1f} GiB of {label} weights and {overhead:.1f} GiB of overhead "
                f"({budget_txt})."
            ),
            suggestion=_context_suggestion(profile, max_context, kv_tokens, tp, kv_gib),
            **figures,
        )

    base = (
        f"{label} weights ({weights_gpu:.1f} GiB per GPU) and {overhead:.1f} GiB of overhead leave "
        f"{kv_gib:.1f} GiB of the {budget_txt} for {k(kv_tokens)} tokens of KV cache: "
        f"{concurrency:g} requests of {k(requested)} tokens at once"
    )
    worries = []
    if concurrency < TIGHT_CONCURRENCY:
        worries.append(f"fewer than {TIGHT_CONCURRENCY:g} full-length requests fit at once")
    if kv_gib < TIGHT_KV_GIB:
        worries.append(f"under {TIGHT_KV_GIB:g} GiB of KV cache per GPU")
    note = image_note(profile, requested)
    if note:
        worries.append(note)
    if not worries:
        return FitReport(verdict="fits", reason=base + ".", **figures)
    suggestion = None
    if note:
        keep = max((requested - MIN_TEXT_TOKENS) // spec.max_tokens_per_image, 0)
        suggestion = f"--set images_per_prompt={keep}, or a longer max_model_len."
    elif sv.kv_cache_dtype == "auto":
        suggestion = (
            f"--set kv_cache_dtype=fp8 doubles the KV cache (about {k(2 * kv_tokens)} tokens)."
        )
    return FitReport(
        verdict="tight",
        reason=f"{base}; tight: {'; '.join(worries)}.",
        suggestion=suggestion,
        **figures,
    )


def _smallest_gpu_gib(
    weights_gpu: float,
    tokens: int,
    kv_bpt: float,
    util: float,
    tp: int,
    batched: int | None,
    graphs: bool,
    spec: ModelSpec,
) -> int:
    """The smallest whole-GiB memory.total per GPU whose KV cache holds `tokens`.

    Searched, not solved: the overhead steps up with vLLM's batch tiers (a 63 GiB card gets the
    4096-token batch a 24 GiB card does not), and the advice must be a size that really fits.
    """
    for size in range(1, 1025):
        cuda_total = size - DRIVER_RESERVED_MIB / 1024
        kv_gib = vllm_kv_cache_gib(cuda_total, util, weights_gpu, tp, batched, graphs, spec)
        if kv_tokens_for(kv_gib, kv_bpt, VLLM_BLOCK_TOKENS) >= tokens:
            return size
    return 1025


def _weights_suggestion(spec: ModelSpec, variant: str, need_gib_per_gpu: float, tp: int) -> str:
    smaller = [
        f"{v} (about {vllm_weights_gib(v, model=spec):.0f} GiB)"
        for v in ("fp8", "w4a16")
        if LINEAR_BITS[v] < LINEAR_BITS[variant] and v in spec.hf_repos
    ]
    more = (
        f"{tp} GPUs with at least {need_gib_per_gpu:.0f} GiB each"
        if tp > 1
        else f"a GPU with at least {need_gib_per_gpu:.0f} GiB"
    )
    if smaller:
        return f"Use smaller weights: {' or '.join(smaller)}, or {more}."
    return f"Use {more}, or more GPUs with tensor parallel."


def _context_suggestion(
    profile: Profile, max_context: int, kv_tokens: int, tp: int, kv_gib: float
) -> str:
    spec = model_of(profile)
    parts = []
    floor = image_tokens(profile) + MIN_TEXT_TOKENS
    if max_context >= max(floor, 2048):
        parts.append(f"--set max_model_len={round_down(max_context)}")
    if profile.serving.kv_cache_dtype == "auto":
        fp8_tokens = kv_tokens_for(kv_gib, kv_bytes_per_token("fp8", tp, spec), VLLM_BLOCK_TOKENS)
        parts.append(
            f"--set kv_cache_dtype=fp8 (holds {k(min(fp8_tokens, spec.max_context))} tokens)"
        )
    if not parts:
        return "Use a GPU with more memory or smaller weights."
    return " or ".join(parts)


def _free_suggestion(profile: Profile, used: list[int], lower: float, backend: str) -> str:
    stop = "Stop the other processes on the GPU (nvidia-smi lists them)"
    if lower <= 0.05:
        return stop + "."
    trial = profile.model_copy(deep=True)
    trial.serving.gpu_memory_utilization = lower
    report = fit_vllm(trial, used, None, backend)
    if report.verdict == "does_not_fit":
        return stop + f"; at the {lower:.2f} utilisation that would pass, it does not fit either."
    return (
        f"{stop}, or --set gpu_memory_utilization={lower:.2f} "
        f"(then {k(report.kv_tokens)} tokens of KV cache)."
    )
