"""Will a profile fit these GPUs? The parts of the memory model every engine shares.

Everything here is arithmetic over plain numbers (GPU totals in MiB, as NVML and nvidia-smi give
them), a `Profile` and its model's record (`models.py`); no I/O. Each engine's own rules live with
it (backends/vllm/fit.py, backends/ollama/fit.py); `preflight.check_fit` picks the engine's.
docs/memory.md walks through the same steps with the sources.

Sources, cited as (copies of shared/data/samples under tests/data):
  FACTS        shared/FACTS.md (model sizes, vLLM/Ollama behaviour)
  AWQ-LOG      logs/vllm/mistral3.1-awq-24gb-kv-then-crash-v0.8.log (vLLM 0.8.3, vllm #16128)
  OLLAMA-Q4    logs/ollama/server-log-mistral-small3.1-offload-41-of-41.log (ollama #10553)
  OLLAMA-Q8    logs/ollama/server-log-mistral-small3.1-q8-2gpu-debug.log (ollama #10553)
  GLM-LOG      logs/vllm/startup-kv-cache-lines-v0.11-glm4v.log
  H100-CSV     nvidia-smi/query-h100-all-fields-csv.txt
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from msmall.errors import ConfigError
from msmall.models import DEFAULT_MODEL, ModelSpec, get_model

if TYPE_CHECKING:
    from msmall.profiles import Profile

GIB = 1024**3


KIB = 1024


Verdict = Literal["fits", "tight", "does_not_fit"]


_RANK = {"does_not_fit": 0, "tight": 1, "fits": 2}


PRECISION_BITS = {"bf16": 16, "fp16": 16, "fp8": 8, "q8_0": 8, "w4a16": 4, "awq": 4, "q4_K_M": 4}


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


def kv_bytes_per_token(
    kv_dtype: str = "auto", tensor_parallel_size: int = 1, model: ModelSpec | None = None
) -> float:
    """KV bytes one token costs on each GPU: 160 KiB in BF16, 80 KiB in FP8, divided by TP."""
    if kv_dtype not in KV_BYTES_PER_VALUE:
        raise ConfigError(f"unknown KV cache dtype '{kv_dtype}'")
    values = (model or default_model()).kv_values_per_token
    return values * KV_BYTES_PER_VALUE[kv_dtype] / tensor_parallel_size


# NVML's memory.total includes memory the driver keeps for itself; CUDA (and so vLLM, which
# sizes its budget from torch.cuda.mem_get_info) sees the rest. H100-CSV: memory.reserved
# 479 MiB of 81,559 (CUDA reports 85,029,158,912 B = 81,090 MiB). RTX 3090: 24,576 MiB in NVML,
# 23.69 GiB in vLLM's profiler (318 MiB). We take the H100 figure for every card.
DRIVER_RESERVED_MIB = 479


# "tight": it fits, but fewer than this many full-length requests fit at once ...
TIGHT_CONCURRENCY = 1.5


# ... or the KV cache is under this much per GPU ...
TIGHT_KV_GIB = 1.0


# The least text worth serving; "auto" below this does not fit.
MIN_TEXT_TOKENS = 1024


def kv_tokens_for(kv_gib: float, bytes_per_token: float, block: int = 1) -> int:
    """Tokens a cache of kv_gib holds, in whole blocks."""
    if kv_gib <= 0:
        return 0
    return int(kv_gib * GIB // (bytes_per_token * block)) * block


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


def gib2(x: float) -> float:
    return round(x, 2)


def k(tokens: int) -> str:
    return f"{tokens:,}"


def round_down(tokens: int, step: int = 1024) -> int:
    return tokens // step * step


def image_tokens(profile: Profile) -> int:
    sv = profile.serving
    return sv.images_per_prompt * model_of(profile).max_tokens_per_image if sv.vision else 0


def image_note(profile: Profile, context: int) -> str | None:
    """A reason when the images a prompt may carry leave too little room for text."""
    images = image_tokens(profile)
    if images and context < images + MIN_TEXT_TOKENS:
        n = profile.serving.images_per_prompt
        return (
            f"{n} image(s) of up to {k(model_of(profile).max_tokens_per_image)} tokens take {k(images)} of the "
            f"{k(context)}-token context"
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


def extra_arg(profile: Profile, name: str) -> str | None:
    """The value of a flag in the profile's extra_args, in either spelling; '' for a bare flag."""
    return _flag([_dashes(a) for a in profile.serving.extra_args], name)


def verdict_rank(verdict: str) -> int:
    """does_not_fit < tight < fits, for comparisons."""
    return _RANK[verdict]


def simulator_report(profile: Profile, backend: str = "simulator") -> FitReport:
    """The verdict for an engine that needs no GPU."""
    context = profile.serving.max_model_len
    context = context if isinstance(context, int) else model_of(profile).max_context
    return FitReport(
        verdict="fits",
        profile=profile.name,
        backend=backend,
        gpus_used=0,
        weights=profile.model.weights,
        kv_cache_dtype=profile.serving.kv_cache_dtype,
        per_gpu_budget_gib=0,
        weights_per_gpu_gib=0,
        overhead_per_gpu_gib=0,
        kv_cache_gib=0,
        kv_tokens=context,
        requested_context=context,
        max_context=model_of(profile).max_context,
        full_length_concurrency=1.0,
        reason=f"The {backend} needs no GPU.",
    )


def model_of(profile: Profile) -> ModelSpec:
    return get_model(profile.model.id)


def default_model() -> ModelSpec:
    return get_model(DEFAULT_MODEL)
