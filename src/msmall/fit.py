"""Will this profile fit these GPUs? The memory model of Mistral Small 3.1, as pure functions.

Everything here is arithmetic over plain numbers (GPU totals in MiB, as NVML and nvidia-smi give
them) and a `Profile`; no I/O. docs/memory.md walks through the same steps with the sources.

Sources, cited as (copies of shared/data/samples under tests/data):
  FACTS        shared/FACTS.md (model sizes, vLLM/Ollama behaviour)
  AWQ-LOG      logs/vllm/mistral3.1-awq-24gb-kv-then-crash-v0.8.log (vLLM 0.8.3, vllm #16128)
  OLLAMA-Q4    logs/ollama/server-log-mistral-small3.1-offload-41-of-41.log (ollama #10553)
  OLLAMA-Q8    logs/ollama/server-log-mistral-small3.1-q8-2gpu-debug.log (ollama #10553)
  GLM-LOG      logs/vllm/startup-kv-cache-lines-v0.11-glm4v.log
  H100-CSV     nvidia-smi/query-h100-all-fields-csv.txt
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from msmall import model as m
from msmall.errors import ConfigError
from msmall.profiles import Profile

GIB = 1024**3
KIB = 1024

Verdict = Literal["fits", "tight", "does_not_fit"]
_RANK = {"does_not_fit": 0, "tight": 1, "fits": 2}

# ---------------------------------------------------------------------------------------------
# Weights

# FFN width of the text decoder (FACTS: "FFN 32768"); model.py does not carry it.
FFN_SIZE = 32768
# Token embedding + the untied output head. Every quantized build keeps both in BF16 (embeddings
# are not Linear layers; lm_head is on the quantizers' ignore lists), so they do not shrink.
EMBED_AND_HEAD_PARAMS = 2 * m.VOCAB_SIZE * m.HIDDEN_SIZE  # 1.34 B
# The 40 decoder layers' matrices: what FP8 / 4-bit quantization actually shrinks (22.23 B).
LINEAR_PARAMS = m.TEXT_PARAMS_B * 1e9 - EMBED_AND_HEAD_PARAMS
# Pixtral encoder + projector; the RedHatAI and OPEA builds leave them in BF16 too.
VISION_PARAMS = (m.VISION_PARAMS_B + m.PROJECTOR_PARAMS_B) * 1e9  # 0.44 B = 0.81 GiB

# Bits per decoder-layer weight by vLLM weight variant. w4a16 (RedHatAI, GPTQ): 4-bit values plus
# a BF16 scale per group of 128, symmetric. AWQ: the same plus a packed 4-bit zero point per group.
LINEAR_BITS = {"bf16": 16.0, "fp8": 8.0, "w4a16": 4 + 16 / 128, "awq": 4 + (16 + 4) / 128}

# Ollama quantizations of the text model. Q4_K_M is measured (OLLAMA-Q4: memory.weights.total=
# "13.1 GiB"); q8_0 stores 34 bytes per 32 weights; fp16 2 bytes. Cross-check for q8_0: the
# OLLAMA-Q8 weight buffers sum to 12.0 + 11.6 + 0.68 = 24.3 GiB with the vision part included.
OLLAMA_TEXT_WEIGHTS_GIB = {
    "q4_K_M": 13.1,
    "q8_0": m.TEXT_PARAMS_B * 1e9 * 34 / 32 / GIB,
    "fp16": m.TEXT_PARAMS_B * 1e9 * 2 / GIB,
}
# Vision encoder + projector in Ollama's fused GGUF (OLLAMA-Q4: projector.weights="769.3 MiB").
OLLAMA_PROJECTOR_GIB = 769.3 / 1024
# Compute graph of the vision encoder for a full 1540-px image (OLLAMA-Q4: projector.graph=
# "8.8 GiB"; ollama #10833 shows a real 9.0 GiB allocation). Ollama's encoder attention is not
# flash attention, so 12,100 patches x 12,100 x 16 heads of f32 scores are materialised.
OLLAMA_VISION_GRAPH_GIB = 8.8

PRECISION_BITS = {"bf16": 16, "fp16": 16, "fp8": 8, "q8_0": 8, "w4a16": 4, "awq": 4, "q4_K_M": 4}


def vllm_weights_gib(weights: str, vision: bool = True) -> float:
    """GiB of weights vLLM loads for a variant (all GPUs together). BF16 = 44.72 GiB (FACTS).

    Without vision (`--limit-mm-per-prompt '{"image":0}'`) vLLM skips the vision tower.
    """
    if weights not in LINEAR_BITS:
        raise ConfigError(f"unknown weight variant '{weights}'", "Use bf16, fp8, w4a16 or awq.")
    total = LINEAR_PARAMS * LINEAR_BITS[weights] / 8 + EMBED_AND_HEAD_PARAMS * 2
    if vision:
        total += VISION_PARAMS * 2
    return total / GIB


def ollama_quant(tag: str) -> str:
    """The quantization an Ollama tag holds: q4_K_M, q8_0 or fp16.

    `mistral-small3.1`, `:latest` and `:24b` are Q4_K_M (FACTS: the library's default tag).
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
        "Use mistral-small3.1:24b (Q4_K_M), :24b-instruct-2503-q8_0 or :24b-instruct-2503-fp16.",
    )


# ---------------------------------------------------------------------------------------------
# KV cache

# K and V, for every layer and KV head: 2 x 40 x 8 x 128 values per token (FACTS).
KV_VALUES_PER_TOKEN = 2 * m.NUM_LAYERS * m.NUM_KV_HEADS * m.HEAD_DIM
# Bytes per value. vLLM's "auto" is the model dtype (BF16). Ollama's q8_0 / q4_0 blocks hold
# 32 values in 34 / 18 bytes (the f16 scale included).
KV_BYTES_PER_VALUE = {
    "auto": 2.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "f16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
}
# vLLM allocates the cache in blocks of 16 tokens.
VLLM_BLOCK_TOKENS = 16


def kv_bytes_per_token(kv_dtype: str = "auto", tensor_parallel_size: int = 1) -> float:
    """KV bytes one token costs on each GPU: 160 KiB in BF16, 80 KiB in FP8, divided by TP."""
    if kv_dtype not in KV_BYTES_PER_VALUE:
        raise ConfigError(f"unknown KV cache dtype '{kv_dtype}'")
    return KV_VALUES_PER_TOKEN * KV_BYTES_PER_VALUE[kv_dtype] / tensor_parallel_size


def ollama_kv_type(kv_cache_dtype: str, env: dict[str, str] | None = None) -> str:
    """Ollama's cache type: OLLAMA_KV_CACHE_TYPE if set, else auto -> f16, fp8* -> q8_0.

    Quantized caches need flash attention; without it Ollama falls back to f16.
    """
    env = env or {}
    kv_type = env.get("OLLAMA_KV_CACHE_TYPE") or ("f16" if kv_cache_dtype == "auto" else "q8_0")
    if kv_type not in ("f16", "q8_0", "q4_0"):
        raise ConfigError(f"OLLAMA_KV_CACHE_TYPE '{kv_type}' is not one of f16, q8_0, q4_0")
    return kv_type if _flash_attention(env) else "f16"


def _flash_attention(env: dict[str, str]) -> bool:
    # msmall's Ollama plan sets OLLAMA_FLASH_ATTENTION=1; only an explicit off turns it off.
    return env.get("OLLAMA_FLASH_ATTENTION", "1").strip().lower() not in ("0", "false", "no", "off")


# ---------------------------------------------------------------------------------------------
# Per-GPU overhead

# NVML's memory.total includes memory the driver keeps for itself; CUDA (and so vLLM, which
# sizes its budget from torch.cuda.mem_get_info) sees the rest. H100-CSV: memory.reserved
# 479 MiB of 81,559 (CUDA reports 85,029,158,912 B = 81,090 MiB). RTX 3090: 24,576 MiB in NVML,
# 23.69 GiB in vLLM's profiler (318 MiB). We take the H100 figure for every card.
DRIVER_RESERVED_MIB = 479

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
# Per token: gate_up output (2 x 32768) plus the SiLU product (32768) in BF16 = 192 KiB, split by
# tensor parallel; hidden state, residual and QKV copies ~40 KiB, replicated.
ACTIVATION_SHARDED_BYTES_PER_TOKEN = 3 * FFN_SIZE * 2
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

# Ollama, per GPU. It keeps 457 MiB free on every CUDA GPU (discover/gpu.go cudaMinimumMemory)
# and adds OLLAMA_GPU_OVERHEAD (bytes) when set.
OLLAMA_MIN_MEMORY_GIB = 457 / 1024
# Text compute graph with flash attention: OLLAMA-Q4 memory.graph.full="426.7 MiB" (4k), rounded up.
OLLAMA_GRAPH_GIB = 0.5
# Without flash attention llama.cpp materialises f32 KQ scores: context x 512 (batch) x 32 heads.
OLLAMA_NOFA_GRAPH_BYTES_PER_TOKEN = 512 * m.NUM_QUERY_HEADS * 4
# Ollama's default context when none is set (FACTS): 4k under 23 GiB of VRAM, 32k under 47, 256k
# above (clamped to the model's 131,072).
OLLAMA_DEFAULT_CONTEXT = ((23.0, 4096), (47.0, 32768), (math.inf, 262144))

# ---------------------------------------------------------------------------------------------
# Margins

# "tight": it fits, but fewer than this many full-length requests fit at once ...
TIGHT_CONCURRENCY = 1.5
# ... or the KV cache is under this much per GPU ...
TIGHT_KV_GIB = 1.0
# ... or (Ollama) less than this much VRAM is left over: its estimates are known to be off by more
# (FACTS: ollama issues 10177, 10167, 10553).
TIGHT_SPARE_GIB = 1.0
# The least text worth serving; "auto" below this does not fit.
MIN_TEXT_TOKENS = 1024


def vllm_batched_tokens(cuda_total_gib: float) -> int:
    """vLLM's default max_num_batched_tokens for a GPU of this much CUDA memory."""
    return [tokens for floor, tokens in VLLM_BATCHED_TOKEN_TIERS if cuda_total_gib >= floor][-1]


def vllm_overhead_gib(
    tensor_parallel_size: int = 1, batched_tokens: int = 2048, cuda_graphs: bool = True
) -> float:
    """Per-GPU memory vLLM needs besides weights and KV cache."""
    per_token = (
        ACTIVATION_SHARDED_BYTES_PER_TOKEN / tensor_parallel_size
        + ACTIVATION_REPLICATED_BYTES_PER_TOKEN
    )
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
) -> float:
    """vLLM's rule: KV = utilization x total - weights - overhead, per GPU (may be negative).

    With the default batch size the overhead steps up at the 40/70/160 GiB tiers; a GPU just past
    a step never gets less than one just below it (it could run with the smaller batch), so more
    memory never means less cache.
    """
    if batched_tokens is not None:
        overhead = vllm_overhead_gib(tensor_parallel_size, batched_tokens, cuda_graphs)
        return utilization * cuda_total_gib - weights_per_gpu_gib - overhead
    best = -math.inf
    tiers = VLLM_BATCHED_TOKEN_TIERS
    for i, (floor, tokens) in enumerate(tiers):
        if cuda_total_gib < floor:
            break
        ceiling = tiers[i + 1][0] if i + 1 < len(tiers) else math.inf
        overhead = vllm_overhead_gib(tensor_parallel_size, tokens, cuda_graphs)
        kv = utilization * min(cuda_total_gib, ceiling) - weights_per_gpu_gib - overhead
        best = max(best, kv)
    return best


def kv_tokens_for(kv_gib: float, bytes_per_token: float, block: int = 1) -> int:
    """Tokens a cache of kv_gib holds, in whole blocks."""
    if kv_gib <= 0:
        return 0
    return int(kv_gib * GIB // (bytes_per_token * block)) * block


# ---------------------------------------------------------------------------------------------
# The report


class FitReport(BaseModel):
    verdict: Verdict
    profile: str
    backend: str
    gpus_used: int
    weights: str  # bf16 | fp8 | w4a16 | awq | q4_K_M | q8_0 | fp16
    kv_cache_dtype: str  # as the engine names it: auto/fp8 (vLLM), f16/q8_0/q4_0 (Ollama)
    per_gpu_budget_gib: float
    weights_per_gpu_gib: float
    overhead_per_gpu_gib: float
    kv_cache_gib: float  # per GPU
    kv_tokens: int  # tokens the whole cache holds
    requested_context: int
    max_context: int  # largest context that fits, capped at 131072; 0 if none
    full_length_concurrency: float  # requests of requested_context that fit at once
    cpu_offload_gib: float = 0.0  # Ollama: what would run on CPU instead
    reason: str
    suggestion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _gib(x: float) -> float:
    return round(x, 2)


def _k(tokens: int) -> str:
    return f"{tokens:,}"


def _round_down(tokens: int, step: int = 1024) -> int:
    return tokens // step * step


def _image_tokens(profile: Profile) -> int:
    sv = profile.serving
    return sv.images_per_prompt * m.MAX_TOKENS_PER_IMAGE if sv.vision else 0


def _image_note(profile: Profile, context: int) -> str | None:
    """A reason when the images a prompt may carry leave too little room for text."""
    images = _image_tokens(profile)
    if images and context < images + MIN_TEXT_TOKENS:
        n = profile.serving.images_per_prompt
        return (
            f"{n} image(s) of up to {_k(m.MAX_TOKENS_PER_IMAGE)} tokens take {_k(images)} of the "
            f"{_k(context)}-token context"
        )
    return None


def _flag(args: Sequence[str], name: str) -> str | None:
    """The value of `--name N` or `--name=N` in extra_args; '' for a bare flag."""
    for i, arg in enumerate(args):
        if arg == name:
            nxt = args[i + 1] if i + 1 < len(args) else ""
            return "" if nxt.startswith("--") else nxt
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _dashes(arg: str) -> str:
    # vLLM's FlexibleArgumentParser turns every underscore of a flag name into a dash (FACTS:
    # underscores are accepted too), so --max_num_batched_tokens=N is --max-num-batched-tokens.
    if not arg.startswith("--"):
        return arg
    flag, eq, value = arg.partition("=")
    return "--" + flag[2:].replace("_", "-") + eq + value


def _extra(profile: Profile, name: str) -> str | None:
    return _flag([_dashes(a) for a in profile.serving.extra_args], name)


# ---------------------------------------------------------------------------------------------
# vLLM (and the vLLM docker image)


def _check_vllm(
    profile: Profile, gpus: Sequence[int], free: Sequence[int] | None, backend: str
) -> FitReport:
    sv = profile.serving
    tp = sv.tensor_parallel_size
    util = sv.gpu_memory_utilization
    variant = profile.model.weights
    weights_gpu = vllm_weights_gib(variant, sv.vision) / tp
    common = dict(
        profile=profile.name, backend=backend, weights=variant, kv_cache_dtype=sv.kv_cache_dtype
    )
    requested_fixed = sv.max_model_len if isinstance(sv.max_model_len, int) else 0

    if len(gpus) < tp:
        return FitReport(
            verdict="does_not_fit",
            gpus_used=len(gpus),
            per_gpu_budget_gib=0,
            weights_per_gpu_gib=_gib(weights_gpu),
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
    kv_bpt = kv_bytes_per_token(sv.kv_cache_dtype, tp)
    batched = _extra(profile, "--max-num-batched-tokens")
    graphs = _extra(profile, "--enforce-eager") is None
    kv_gib = vllm_kv_cache_gib(
        cuda_total, util, weights_gpu, tp, int(batched) if batched else None, graphs
    )
    overhead = budget - weights_gpu - kv_gib
    kv_tokens = kv_tokens_for(kv_gib, kv_bpt, VLLM_BLOCK_TOKENS)
    max_context = min(kv_tokens, m.MAX_CONTEXT) if kv_tokens >= 256 else 0
    requested = requested_fixed or max_context
    concurrency = round(kv_tokens / requested, 2) if requested else 0.0
    gpus_word = f"{tp} GPUs" if tp > 1 else "the GPU"
    budget_txt = f"{util:g} x {cuda_total:.1f} GiB = {budget:.1f} GiB per GPU"
    figures = dict(
        gpus_used=tp,
        per_gpu_budget_gib=_gib(budget),
        weights_per_gpu_gib=_gib(weights_gpu),
        overhead_per_gpu_gib=_gib(overhead),
        kv_cache_gib=_gib(max(kv_gib, 0)),
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
        graphs,
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
            suggestion=_weights_suggestion(variant, need_per_gpu, tp),
            **figures,
        )

    if requested_fixed and kv_tokens < requested_fixed:
        need_kv = requested_fixed * kv_bpt / GIB
        return FitReport(
            verdict="does_not_fit",
            reason=(
                f"One {_k(requested_fixed)}-token request needs {need_kv:.1f} GiB of KV cache per "
                f"GPU, but only {kv_gib:.1f} GiB ({_k(kv_tokens)} tokens) is left on {gpus_word} "
                f"after {weights_gpu:.1f} GiB of {label} weights and {overhead:.1f} GiB of overhead "
                f"({budget_txt})."
            ),
            suggestion=_context_suggestion(profile, max_context, kv_tokens, tp, kv_gib),
            **figures,
        )

    base = (
        f"{label} weights ({weights_gpu:.1f} GiB per GPU) and {overhead:.1f} GiB of overhead leave "
        f"{kv_gib:.1f} GiB of the {budget_txt} for {_k(kv_tokens)} tokens of KV cache: "
        f"{concurrency:g} requests of {_k(requested)} tokens at once"
    )
    worries = []
    if concurrency < TIGHT_CONCURRENCY:
        worries.append(f"fewer than {TIGHT_CONCURRENCY:g} full-length requests fit at once")
    if kv_gib < TIGHT_KV_GIB:
        worries.append(f"under {TIGHT_KV_GIB:g} GiB of KV cache per GPU")
    note = _image_note(profile, requested)
    if note:
        worries.append(note)
    if not worries:
        return FitReport(verdict="fits", reason=base + ".", **figures)
    suggestion = None
    if note:
        keep = max((requested - MIN_TEXT_TOKENS) // m.MAX_TOKENS_PER_IMAGE, 0)
        suggestion = f"--set images_per_prompt={keep}, or a longer max_model_len."
    elif sv.kv_cache_dtype == "auto":
        suggestion = (
            f"--set kv_cache_dtype=fp8 doubles the KV cache (about {_k(2 * kv_tokens)} tokens)."
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
) -> int:
    """The smallest whole-GiB memory.total per GPU whose KV cache holds `tokens`.

    Searched, not solved: the overhead steps up with vLLM's batch tiers (a 63 GiB card gets the
    4096-token batch a 24 GiB card does not), and the advice must be a size that really fits.
    """
    for size in range(1, 1025):
        cuda_total = size - DRIVER_RESERVED_MIB / 1024
        kv_gib = vllm_kv_cache_gib(cuda_total, util, weights_gpu, tp, batched, graphs)
        if kv_tokens_for(kv_gib, kv_bpt, VLLM_BLOCK_TOKENS) >= tokens:
            return size
    return 1025


def _weights_suggestion(variant: str, need_gib_per_gpu: float, tp: int) -> str:
    smaller = [
        f"{v} (about {vllm_weights_gib(v):.0f} GiB)"
        for v in ("fp8", "w4a16")
        if LINEAR_BITS[v] < LINEAR_BITS[variant]
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
    parts = []
    floor = _image_tokens(profile) + MIN_TEXT_TOKENS
    if max_context >= max(floor, 2048):
        parts.append(f"--set max_model_len={_round_down(max_context)}")
    if profile.serving.kv_cache_dtype == "auto":
        fp8_tokens = kv_tokens_for(kv_gib, kv_bytes_per_token("fp8", tp), VLLM_BLOCK_TOKENS)
        parts.append(
            f"--set kv_cache_dtype=fp8 (holds {_k(min(fp8_tokens, m.MAX_CONTEXT))} tokens)"
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
    report = _check_vllm(trial, used, None, backend)
    if report.verdict == "does_not_fit":
        return stop + f"; at the {lower:.2f} utilisation that would pass, it does not fit either."
    return (
        f"{stop}, or --set gpu_memory_utilization={lower:.2f} "
        f"(then {_k(report.kv_tokens)} tokens of KV cache)."
    )


# ---------------------------------------------------------------------------------------------
# Ollama


def ollama_default_context(vram_gib: float) -> int:
    """The context Ollama picks when OLLAMA_CONTEXT_LENGTH is not set (FACTS)."""
    for below, tokens in OLLAMA_DEFAULT_CONTEXT:
        if vram_gib < below:
            return min(tokens, m.MAX_CONTEXT)
    return m.MAX_CONTEXT


def _check_ollama(
    profile: Profile, gpus: Sequence[int], free: Sequence[int] | None, backend: str
) -> FitReport:
    sv = profile.serving
    env = dict(sv.env)
    quant = ollama_quant(profile.model.ollama_tag)
    fa = _flash_attention(env)
    kv_type = ollama_kv_type(sv.kv_cache_dtype, env)
    parallel = int(env.get("OLLAMA_NUM_PARALLEL") or getattr(sv, "ollama_num_parallel", 1))
    parallel = max(parallel, 1)
    weights = OLLAMA_TEXT_WEIGHTS_GIB[quant]
    vision = OLLAMA_PROJECTOR_GIB + OLLAMA_VISION_GRAPH_GIB
    kv_bpt = kv_bytes_per_token(kv_type)
    n = len(gpus)
    reserve = OLLAMA_MIN_MEMORY_GIB + int(env.get("OLLAMA_GPU_OVERHEAD") or 0) / GIB
    # What Ollama sees per GPU: CUDA's total, or the free memory when we know it.
    seen = [
        (min(f, t - DRIVER_RESERVED_MIB) if free is not None else t - DRIVER_RESERVED_MIB) / 1024
        for t, f in zip(gpus, free if free is not None else gpus, strict=True)
    ]
    avail = [max(s - reserve, 0.0) for s in seen]
    graph_per_ctx = 0.0 if fa else OLLAMA_NOFA_GRAPH_BYTES_PER_TOKEN / GIB

    # Largest context with the whole text model (weights, cache, graph) on the GPUs; Ollama
    # offloads the vision encoder last (ollama #10833), so it may sit on CPU.
    room = sum(avail) - n * OLLAMA_GRAPH_GIB - weights
    per_ctx = parallel * (kv_bpt / GIB + n * graph_per_ctx)
    fit_ctx = int(room // per_ctx) if n and room > 0 else 0
    max_context = min(fit_ctx, m.MAX_CONTEXT) if fit_ctx >= 256 else 0

    if "OLLAMA_CONTEXT_LENGTH" in env:
        context = int(env["OLLAMA_CONTEXT_LENGTH"])
    elif isinstance(sv.max_model_len, int):
        context = sv.max_model_len
    else:
        # msmall's plan leaves OLLAMA_CONTEXT_LENGTH unset for "auto": Ollama's own default.
        context = ollama_default_context(sum(seen))
    # Ollama clamps a longer context to the model's trained one.
    context = min(context, m.MAX_CONTEXT)
    kv = context * parallel * kv_bpt / GIB
    graph = OLLAMA_GRAPH_GIB + graph_per_ctx * context * parallel
    after_text = sum(avail) - n * graph - weights - kv
    text = weights + kv
    label = quant.upper() if quant != "fp16" else "FP16"
    where = f"{n} GPU{'s' if n != 1 else ''}" if n else "no GPU"
    slots = f" x {parallel} slots" if parallel > 1 else ""
    needs = (
        f"{label} weights ({weights:.1f} GiB) and a {_k(context)}-token{slots} {kv_type} KV "
        f"cache ({kv:.1f} GiB)"
    )
    figures = dict(
        profile=profile.name,
        backend=backend,
        gpus_used=n,
        weights=quant,
        kv_cache_dtype=kv_type,
        per_gpu_budget_gib=_gib(sum(seen) / n) if n else 0.0,
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
            weights_per_gpu_gib=_gib(weights * on_gpu / n) if n else 0.0,
            overhead_per_gpu_gib=_gib(reserve + graph) if n else 0.0,
            kv_cache_gib=_gib(kv * on_gpu / n) if n else 0.0,
            full_length_concurrency=0.0,
            cpu_offload_gib=_gib(cpu),
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
        weights_per_gpu_gib=_gib((weights + (OLLAMA_PROJECTOR_GIB if vision_on_gpu else 0)) / n),
        overhead_per_gpu_gib=_gib(
            reserve + graph + (OLLAMA_VISION_GRAPH_GIB / n if vision_on_gpu else 0)
        ),
        kv_cache_gib=_gib(kv / n),
        full_length_concurrency=float(parallel),
        cpu_offload_gib=0.0 if vision_on_gpu else _gib(vision),
    )
    worries = []
    suggestion = None
    if not vision_on_gpu:
        worries.append(
            f"the vision encoder ({OLLAMA_PROJECTOR_GIB:.1f} GiB + {OLLAMA_VISION_GRAPH_GIB:.1f} "
            f"GiB image graph) does not fit beside it, so Ollama runs it on CPU: images are slow"
        )
        suggestion = (
            f"Text runs fully on GPU. For fast images use --backend vllm, or GPUs with "
            f"{vision - largest_left:.1f} GiB more free."
        )
    elif spare < TIGHT_SPARE_GIB:
        worries.append(f"only {spare:.1f} GiB is left over, and Ollama's estimates can be off")
    note = _image_note(profile, context)
    if note:
        worries.append(note)
        if suggestion is None:
            keep = max((context - MIN_TEXT_TOKENS) // m.MAX_TOKENS_PER_IMAGE, 0)
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
    parts = []
    if max_context >= max(_image_tokens(profile) + MIN_TEXT_TOKENS, 2048):
        parts.append(f"--set max_model_len={_round_down(max_context)}")
    if kv_type == "f16" and fa:
        parts.append("--set kv_cache_dtype=fp8 (q8_0 KV cache, half the size)")
    if quant != "q4_K_M":
        parts.append("the Q4_K_M tag mistral-small3.1:24b (13.1 GiB)")
    if not parts:
        return "Needs a GPU with more memory: Q4_K_M weights alone are 13.1 GiB."
    return "Try " + " or ".join(parts) + "."


# ---------------------------------------------------------------------------------------------
# Public entry points


def check_fit(
    profile: Profile,
    gpu_memory_mib: Sequence[int],
    backend: str | None = None,
    free_mib: Sequence[int] | None = None,
    *,
    alternatives: Iterable[Profile] | None = None,
) -> FitReport:
    """Will `profile` fit GPUs with these totals (MiB, as nvidia-smi reports them)?

    gpu_memory_mib lists the GPUs that will be used: vLLM takes the first tensor_parallel_size of
    them, Ollama spreads over all of them. free_mib, when known, is each GPU's free memory: vLLM
    refuses to start below utilization x total; Ollama only uses what is free. `alternatives`
    (e.g. the shipped profiles) lets the suggestion name a profile that fits instead.
    """
    backend = backend or profile.backend
    if free_mib is not None and len(free_mib) != len(gpu_memory_mib):
        raise ConfigError("free_mib must list the same GPUs as gpu_memory_mib")
    if backend in ("vllm", "docker"):
        report = _check_vllm(profile, gpu_memory_mib, free_mib, backend)
    elif backend == "ollama":
        report = _check_ollama(profile, gpu_memory_mib, free_mib, backend)
    elif backend == "simulator":
        return _simulator_report(profile)
    else:
        raise ConfigError(f"unknown backend '{backend}'", "Use vllm, docker, ollama or simulator.")
    if report.verdict == "does_not_fit" and report.max_context == 0 and alternatives is not None:
        others = [p for p in alternatives if p.name != profile.name]
        better = recommend(others, gpu_memory_mib)
        if better:
            report.suggestion = f"Use the profile {better}, which fits these GPUs."
    return report


def _simulator_report(profile: Profile) -> FitReport:
    context = profile.serving.max_model_len
    context = context if isinstance(context, int) else m.MAX_CONTEXT
    return FitReport(
        verdict="fits",
        profile=profile.name,
        backend="simulator",
        gpus_used=0,
        weights=profile.model.weights,
        kv_cache_dtype=profile.serving.kv_cache_dtype,
        per_gpu_budget_gib=0,
        weights_per_gpu_gib=0,
        overhead_per_gpu_gib=0,
        kv_cache_gib=0,
        kv_tokens=context,
        requested_context=context,
        max_context=m.MAX_CONTEXT,
        full_length_concurrency=1.0,
        reason="The simulator needs no GPU.",
    )


def largest_context(
    profile: Profile,
    gpu_memory_mib: Sequence[int],
    backend: str | None = None,
    free_mib: Sequence[int] | None = None,
) -> int:
    """The largest max_model_len that fits (capped at 131,072); 0 if none."""
    return check_fit(profile, gpu_memory_mib, backend, free_mib).max_context


def recommend(profiles: Iterable[Profile], gpu_memory_mib: Sequence[int]) -> str | None:
    """The best profile that fits these GPUs: vision first, then precision, then context.

    Profiles for the simulator (or for no GPU) and loading errors in the list are skipped.
    Ties go to "fits" over "tight", then to fewer GPUs, then to the first name.
    """
    best: tuple[Any, ...] | None = None
    name = None
    for prof in sorted((p for p in profiles if isinstance(p, Profile)), key=lambda p: p.name):
        if prof.backend == "simulator" or prof.hardware.gpu_count == 0:
            continue
        need = max(prof.hardware.gpu_count, prof.serving.tensor_parallel_size)
        if len(gpu_memory_mib) < need:
            continue
        report = check_fit(prof, list(gpu_memory_mib[:need]))
        if report.verdict == "does_not_fit":
            continue
        key = (
            prof.serving.vision,
            PRECISION_BITS[report.weights],
            report.requested_context,
            _RANK[report.verdict],
            report.max_context,
            -need,
        )
        if best is None or key > best:
            best, name = key, prof.name
    return name


def verdict_rank(verdict: str) -> int:
    """does_not_fit < tight < fits, for comparisons."""
    return _RANK[verdict]


# ---------------------------------------------------------------------------------------------
# The docs table (docs/memory.md)

# nvidia-smi memory.total of common GPUs, MiB. 4090, 3090, H100: samples/nvidia-smi (rtx4090-x8,
# rtx3090-x2, h100-80gb-hbm3-idle). L40S and A100-SXM4-80GB: nvidia-smi listings on driver 580.
COMMON_GPUS: dict[str, list[int]] = {
    "RTX 4090 24 GB": [24564],
    "RTX 3090 24 GB": [24576],
    "L40S 48 GB": [46068],
    "A100 80 GB": [81920],
    "H100 80 GB": [81559],
    "2x RTX 4090": [24564, 24564],
    "2x L40S": [46068, 46068],
}


def _cell(report: FitReport) -> str:
    if report.verdict == "does_not_fit" and report.reason.startswith("Tensor parallel"):
        return f"needs {report.reason.split(' needs ')[1].split(';')[0]}"
    words = {"fits": "fits", "tight": "tight", "does_not_fit": "does not fit"}[report.verdict]
    if report.cpu_offload_gib and report.verdict != "does_not_fit":
        words += " (vision on CPU)"
    if report.max_context:
        return f"{words}, max {report.max_context:,}"
    return words


def markdown_table(profiles: Iterable[Profile], gpus: dict[str, list[int]] | None = None) -> str:
    """Each profile (and each Ollama profile also under vLLM) against common GPUs."""
    gpus = gpus or COMMON_GPUS
    header = "| profile | backend | context | " + " | ".join(gpus) + " |"
    rule = "|" + " --- |" * (3 + len(gpus))
    rows = [header, rule]
    for prof in sorted(profiles, key=lambda p: p.name):
        if prof.backend == "simulator":
            continue
        backends = [prof.backend] + (["vllm"] if prof.backend == "ollama" else [])
        for backend in backends:
            context = prof.serving.max_model_len
            cells = [_cell(check_fit(prof, sizes, backend)) for sizes in gpus.values()]
            rows.append(f"| {prof.name} | {backend} | {context} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
