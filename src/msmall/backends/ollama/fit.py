"""Ollama's memory rules: GGUF weights, its per-GPU reserve, the compute graphs, the spill to CPU.

Shared pieces (the report, KV bytes per token, margins) are in msmall.fit; sources are cited as
there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from msmall.errors import ConfigError
from msmall.fit import (
    DRIVER_RESERVED_MIB,
    GIB,
    MIN_TEXT_TOKENS,
    FitReport,
    default_model,
    gib2,
    image_note,
    image_tokens,
    k,
    kv_bytes_per_token,
    model_of,
    round_down,
)
from msmall.models import ModelSpec

if TYPE_CHECKING:
    from msmall.profiles import Profile

# Ollama, per GPU. It keeps 457 MiB free on every CUDA GPU (discover/gpu.go cudaMinimumMemory)
# and adds OLLAMA_GPU_OVERHEAD (bytes) when set.
OLLAMA_MIN_MEMORY_GIB = 457 / 1024


def nofa_graph_bytes_per_token(spec: ModelSpec) -> int:
    """Without flash attention llama.cpp materialises f32 KQ scores: context x 512 (batch) x
    query heads, 4 bytes each."""
    return 512 * spec.num_query_heads * 4


# Text compute graph with flash attention: OLLAMA-Q4 memory.graph.full="426.7 MiB" (4k), rounded up.
OLLAMA_GRAPH_GIB = 0.5


# Ollama's default context when none is set (FACTS): 4k under 23 GiB of VRAM, 32k under 47, 256k
# above (clamped to the model's 131,072).
OLLAMA_DEFAULT_CONTEXT = ((23.0, 4096), (47.0, 32768), (math.inf, 262144))


# ... or (Ollama) less than this much VRAM is left over: its estimates are known to be off by more
# (FACTS: ollama issues 10177, 10167, 10553).
TIGHT_SPARE_GIB = 1.0


def ollama_quant(tag: str) -> str:
    """The quantization an Ollama tag holds: q4_K_M, q8_0 or fp16.

    `mistral-small3.1`, `:latest` and `:24b` are Q4_K_M (FACTS: the library's default tag; the
    same holds for mistral-small3.2).
    """
    _, _, variant = tag.strip().lower().partition(":")
    if variant in ("", "latest", "24b"):
        return "q4_K_M"
    for marker, quant in (
        ("q4_k_m", "q4_K_M"),
        ("q8_0", "q8_0"),
        ("fp16", "fp16"),
        ("f16", "fp16"),
    ):
        if variant.endswith(marker):
            return quant
    raise ConfigError(
        f"cannot tell the quantization of Ollama tag '{tag}'",
        "Use a tag that ends in q4_K_M, q8_0 or fp16, or :24b (Q4_K_M), e.g. "
        "mistral-small3.1:24b-instruct-2503-q8_0.",
    )


def ollama_kv_type(kv_cache_dtype: str, env: dict[str, str] | None = None) -> str:
    """Ollama's cache type: OLLAMA_KV_CACHE_TYPE if set, else auto -> f16, fp8* -> q8_0.

    Quantized caches need flash attention; without it Ollama falls back to f16.
    """
    env = env or {}
    kv_type = env.get("OLLAMA_KV_CACHE_TYPE") or ("f16" if kv_cache_dtype == "auto" else "q8_0")
    if kv_type not in ("f16", "q8_0", "q4_0"):
        raise ConfigError(f"OLLAMA_KV_CACHE_TYPE '{kv_type}' is not one of f16, q8_0, q4_0")
    return kv_type if flash_attention(env) else "f16"


def flash_attention(env: dict[str, str]) -> bool:
    # msmall's Ollama plan sets OLLAMA_FLASH_ATTENTION=1; only an explicit off turns it off.
    return env.get("OLLAMA_FLASH_ATTENTION", "1").strip().lower() not in ("0", "false", "no", "off")


def ollama_default_context(vram_gib: float, spec: ModelSpec | None = None) -> int:
    """The context Ollama picks when OLLAMA_CONTEXT_LENGTH is not set (FACTS)."""
    spec = spec or default_model()
    for below, tokens in OLLAMA_DEFAULT_CONTEXT:
        if vram_gib < below:
            return min(tokens, spec.max_context)
    return spec.max_context


def fit_ollama(
    profile: Profile,
    gpus: Sequence[int],
    free: Sequence[int] | None,
    backend: str = "ollama",
    env: Mapping[str, str] | None = None,
) -> FitReport:
    """Ollama's verdict: what fits on the GPUs, and what would spill to the CPU.

    `env` is the environment `ollama serve` will run with (the preflight passes the user's shell
    with the plan's variables on top, as the process runtime builds it); None: the profile's own
    env only (doctor's tables, recommend()).
    """
    spec = model_of(profile)
    sv = profile.serving
    env = dict(sv.env) if env is None else dict(env)
    quant = ollama_quant(profile.model.ollama_tag)
    fa = flash_attention(env)
    kv_type = ollama_kv_type(sv.kv_cache_dtype, env)
    parallel = int(env.get("OLLAMA_NUM_PARALLEL") or getattr(sv, "ollama_num_parallel", 1))
    parallel = max(parallel, 1)
    weights = spec.ollama_text_weights_gib[quant]
    vision = spec.ollama_projector_gib + spec.ollama_vision_graph_gib
    kv_bpt = kv_bytes_per_token(kv_type, model=spec)
    n = len(gpus)
    reserve = OLLAMA_MIN_MEMORY_GIB + int(env.get("OLLAMA_GPU_OVERHEAD") or 0) / GIB
    # What Ollama sees per GPU: CUDA's total, or the free memory when we know it.
    seen = [
        (min(f, t - DRIVER_RESERVED_MIB) if free is not None else t - DRIVER_RESERVED_MIB) / 1024
        for t, f in zip(gpus, free if free is not None else gpus, strict=True)
    ]
    avail = [max(s - reserve, 0.0) for s in seen]
    graph_per_ctx = 0.0 if fa else nofa_graph_bytes_per_token(spec) / GIB

    # Largest context with the whole text model (weights, cache, graph) on the GPUs; Ollama
    # offloads the vision encoder last (ollama #10833), so it may sit on CPU.
    room = sum(avail) - n * OLLAMA_GRAPH_GIB - weights
    per_ctx = parallel * (kv_bpt / GIB + n * graph_per_ctx)
    fit_ctx = int(room // per_ctx) if n and room > 0 else 0
    max_context = min(fit_ctx, spec.max_context) if fit_ctx >= 256 else 0

    if "OLLAMA_CONTEXT_LENGTH" in env:
        context = int(env["OLLAMA_CONTEXT_LENGTH"])
    elif isinstance(sv.max_model_len, int):
        context = sv.max_model_len
    else:
        # msmall's plan leaves OLLAMA_CONTEXT_LENGTH unset for "auto": Ollama's own default.
        context = ollama_default_context(sum(seen), spec)
    # Ollama clamps a longer context to the model's trained one.
    context = min(context, spec.max_context)
    kv = context * parallel * kv_bpt / GIB
    graph = OLLAMA_GRAPH_GIB + graph_per_ctx * context * parallel
    after_text = sum(avail) - n * graph - weights - kv
    text = weights + kv
    label = quant.upper() if quant != "fp16" else "FP16"
    where = f"{n} GPU{'s' if n != 1 else ''}" if n else "no GPU"
    slots = f" x {parallel} slots" if parallel > 1 else ""
    needs = (
        f"{label} weights ({weights:.1f} GiB) and a {k(context)}-token{slots} {kv_type} KV "
        f"cache ({kv:.1f} GiB)"
    )
    figures = dict(
        profile=profile.name,
        backend=backend,
        gpus_used=n,
        weights=quant,
        kv_cache_dtype=kv_type,
        per_gpu_budget_gib=gib2(sum(seen) / n) if n else 0.0,
        requested_context=context,
        max_context=max_context,
        kv_tokens=context * parallel,
    )

    if after_text < 0:
        spilled = min(-after_text, text)
        on_gpu = 1 - spilled / text
        cpu = spilled + vision
        suggestion = _ollama_suggestion(profile, max_context, kv_type, fa, quant)
        return FitReport(
            verdict="does_not_fit",
            weights_per_gpu_gib=gib2(weights * on_gpu / n) if n else 0.0,
            overhead_per_gpu_gib=gib2(reserve + graph) if n else 0.0,
            kv_cache_gib=gib2(kv * on_gpu / n) if n else 0.0,
            full_length_concurrency=0.0,
            cpu_offload_gib=gib2(cpu),
            reason=(
                f"Does not fit on GPU: {cpu:.1f} GiB would run on CPU. {needs} need "
                f"{text + n * graph:.1f} GiB with the compute graph; {sum(avail):.1f} GiB is usable "
                f"on {where}, and the vision encoder ({vision:.1f} GiB) goes to CPU first."
            ),
            suggestion=suggestion,
            **figures,
        )

    # Ollama splits layers in proportion to free memory and never splits the vision encoder, so
    # it needs its whole size left on one GPU.
    largest_left = after_text * max(avail) / sum(avail)
    vision_on_gpu = largest_left >= vision
    spare = after_text - vision if vision_on_gpu else after_text
    figures.update(
        weights_per_gpu_gib=gib2(
            (weights + (spec.ollama_projector_gib if vision_on_gpu else 0)) / n
        ),
        overhead_per_gpu_gib=gib2(
            reserve + graph + (spec.ollama_vision_graph_gib / n if vision_on_gpu else 0)
        ),
        kv_cache_gib=gib2(kv / n),
        full_length_concurrency=float(parallel),
        cpu_offload_gib=0.0 if vision_on_gpu else gib2(vision),
    )
    worries = []
    suggestion = None
    if not vision_on_gpu:
        worries.append(
            f"the vision encoder ({spec.ollama_projector_gib:.1f} GiB + {spec.ollama_vision_graph_gib:.1f} "
            f"GiB image graph) does not fit beside it, so Ollama runs it on CPU: images are slow"
        )
        suggestion = (
            f"Text runs fully on GPU. For fast images use --backend vllm, or GPUs with "
            f"{vision - largest_left:.1f} GiB more free."
        )
    elif spare < TIGHT_SPARE_GIB:
        worries.append(f"only {spare:.1f} GiB is left over, and Ollama's estimates can be off")
    note = image_note(profile, context)
    if note:
        worries.append(note)
        if suggestion is None:
            keep = max((context - MIN_TEXT_TOKENS) // spec.max_tokens_per_image, 0)
            suggestion = f"--set images_per_prompt={keep}, or a longer max_model_len."
    base = f"{needs} fit in {sum(avail):.1f} GiB usable on {where}"
    if vision_on_gpu:
        base += f" with the vision encoder ({vision:.1f} GiB), {spare:.1f} GiB to spare"
    if not worries:
        return FitReport(verdict="fits", reason=base + ".", **figures)
    if suggestion is None and kv_type == "f16" and fa:
        suggestion = "--set kv_cache_dtype=fp8 (Ollama q8_0 KV cache) halves the cache."
    return FitReport(
        verdict="tight",
        reason=f"{base}; but {'; '.join(worries)}.",
        suggestion=suggestion,
        **figures,
    )


def _ollama_suggestion(
    profile: Profile, max_context: int, kv_type: str, fa: bool, quant: str
) -> str:
    spec = model_of(profile)
    q4 = spec.ollama_text_weights_gib["q4_K_M"]
    parts = []
    if max_context >= max(image_tokens(profile) + MIN_TEXT_TOKENS, 2048):
        parts.append(f"--set max_model_len={round_down(max_context)}")
    if kv_type == "f16" and fa:
        parts.append("--set kv_cache_dtype=fp8 (q8_0 KV cache, half the size)")
    if quant != "q4_K_M":
        parts.append(f"the Q4_K_M tag {spec.default_ollama_tag} ({q4:.1f} GiB)")
    if not parts:
        return f"Needs a GPU with more memory: Q4_K_M weights alone are {q4:.1f} GiB."
    return "Try " + " or ".join(parts) + "."
