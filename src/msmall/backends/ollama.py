"""Ollama: `ollama serve` configured through its environment, plus the model to pull and preload."""

from __future__ import annotations

from msmall.backends import PlanOptions, check_exposure
from msmall.plan import LaunchPlan
from msmall.profiles import Profile

# Ollama's KV cache types; anything but f16 needs flash attention.
_KV_TYPES = {"auto": "f16", "fp8": "q8_0", "fp8_e4m3": "q8_0", "fp8_e5m2": "q8_0"}


def plan_ollama(profile: Profile, options: PlanOptions) -> LaunchPlan:
    sv = profile.serving
    host = options.host or sv.host
    port = options.port or profile.port_for("ollama")
    warnings = check_exposure(host, options.api_key, "ollama")
    env = {
        "OLLAMA_HOST": f"{host}:{port}",
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
    env.update(sv.env)
    if not sv.vision:
        warnings.append(
            "Ollama serves images whenever the model has them; vision: false only "
            "skips msmall's vision check."
        )
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return LaunchPlan(
        profile=profile.name,
        backend="ollama",
        deployment=options.deployment or profile.name,
        argv=["ollama", "serve"],
        env=env,
        base_url=f"http://{connect}:{port}",
        served_model_name=profile.model.ollama_tag,
        flavor="ollama",
        vision=sv.vision,
        images_per_prompt=sv.images_per_prompt if sv.vision else 0,
        tools=sv.tools,
        max_model_len=sv.max_model_len,
        pull_model=profile.model.ollama_tag,
        warnings=warnings,
    )
