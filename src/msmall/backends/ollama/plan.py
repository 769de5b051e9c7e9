"""Ollama: `ollama serve` configured through its environment, plus the model to pull and preload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmall.backends.base import PlanOptions, common_fields, endpoint, gpu_env
from msmall.plan import LaunchPlan

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.profiles import Profile

# Ollama's KV cache types; anything but f16 needs flash attention.
_KV_TYPES = {"auto": "f16", "fp8": "q8_0", "fp8_e4m3": "q8_0", "fp8_e5m2": "q8_0"}


def plan_ollama(profile: Profile, options: PlanOptions, engine: Engine) -> LaunchPlan:
    sv = profile.serving
    ep = endpoint(profile, options, engine)
    env = {
        "OLLAMA_HOST": f"{ep.host}:{ep.port}",
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_KV_CACHE_TYPE": _KV_TYPES[sv.kv_cache_dtype],
        # Each parallel slot gets a full context of KV cache in Ollama, so keep the profile's count.
        "OLLAMA_NUM_PARALLEL": str(sv.ollama_num_parallel),
        # Keep the model loaded while msmall serves it; the default 5m unloads it between uses.
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    if sv.max_model_len != "auto":
        # The OpenAI endpoint cannot set the context per request; without this Ollama picks
        # 4k/32k/256k from the VRAM size.
        env["OLLAMA_CONTEXT_LENGTH"] = str(sv.max_model_len)
    env.update(gpu_env(profile))
    env.update(sv.env)
    if not sv.vision:
        ep.warnings.append(
            "Ollama serves images whenever the model has them; vision: false only "
            "skips msmall's vision check."
        )
    return LaunchPlan(
        **common_fields(profile, options, ep, engine, "process"),
        argv=["ollama", "serve"],
        env=env,
        served_model_name=profile.model.ollama_tag,
        pull_model=profile.model.ollama_tag,
    )
