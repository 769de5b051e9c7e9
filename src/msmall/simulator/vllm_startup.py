"""The load phase of ``vllm serve``, as its log shows it: config, weights, KV cache, routes.

The numbers are those of the 4-bit checkpoint on one 24 GB card (14.25 GiB of weights, a KV
cache of 39,120 tokens for 32k requests); the wording is vLLM 0.33's, so msmall's log parsers
and diagnoses see exactly what a real load prints, failures included.
"""

from __future__ import annotations

import math

from msmall.models import MISTRAL_SMALL_3_1 as m
from msmall.simulator.config import VLLM_VERSION
from msmall.simulator.state import SimState
from msmall.simulator.vllm_app import LOGGED_ROUTES

_KV_BYTES_PER_TOKEN = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2  # bf16: 160 KiB
_WEIGHTS_GIB = 14.25  # the 4-bit (w4a16) checkpoint on one 24 GB card
_GIB = 2**30


async def vllm_load(state: SimState, port: int) -> int | None:
    """The load phase of ``vllm serve``: log lines, delay, failures. Returns 1 on failure."""
    config = state.config
    log = state.vllm_log
    model_path = config.model or config.model_name
    length = config.context_length
    delay = config.startup_delay
    log.api(f"vLLM API server version {VLLM_VERSION}", "api_server.py:1805")
    args = {"model_tag": model_path, "host": config.host, "port": port, "max_model_len": length}
    if config.served_model_name:
        args["served_model_name"] = list(config.model_names)
    log.api(f"non-default args: {args}", "utils.py:253")
    log.api("Resolved architecture: Mistral3ForConditionalGeneration", "model.py:611")
    log.api(f"Using max model len {length}", "model.py:1745")
    log.engine(
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model='{model_path}', "
        f"max_seq_len={length}, served_model_name={config.model_name}",
        "core.py:93",
    )
    await state.sleep(delay * 0.1)
    if _stopping(state):
        return None
    if config.failing("low-free-memory"):
        _vllm_engine_failed(
            state,
            "ValueError: Free memory on device cuda:0 (1.53/22.05 GiB) on startup is less than "
            "desired GPU memory utilization (0.92, 20.29 GiB). Decrease GPU memory utilization "
            "or reduce GPU memory used by other processes.",
        )
        return 1

    log.engine(f"Starting to load model {model_path}...", "gpu_model_runner.py:2875")
    shards = 5
    for shard in range(1, shards + 1):
        await state.sleep(delay * 0.6 / shards)
        if _stopping(state):
            return None
        if config.failing("oom-on-load") and shard == 3:
            _vllm_engine_failed(
                state,
                "Failed to create unquantized linear weights: CUDA out of memory. Tried to allocate "
                "896.00 MiB. GPU 0 has a total capacity of 23.53 GiB of which 739.81 MiB is free. "
                "Including non-PyTorch memory, this process has 22.79 GiB memory in use. Of the "
                "allocated memory 22.13 GiB is allocated by PyTorch, and 1.84 MiB is reserved by "
                "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
                "documentation for Memory Management  "
                "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
                source="linear.py:210",
            )
            return 1
        percent = shard * 100 // shards
        log.raw(
            f"(EngineCore pid={log.engine_pid}) Loading safetensors checkpoint shards: "
            f"{percent:3d}% Completed | {shard}/{shards} [00:0{shard}<00:00,  1.05it/s]"
        )
    log.engine(
        f"Loading weights took {max(delay * 0.6, 0.01):.2f} seconds", "default_loader.py:267"
    )
    log.engine(
        f"Model loading took {_WEIGHTS_GIB:.2f} GiB memory and {max(delay * 0.7, 0.01):.6f} seconds",
        "gpu_model_runner.py:2907",
    )
    await state.sleep(delay * 0.2)
    if _stopping(state):
        return None
    kv_tokens = config.kv_tokens
    kv_gib = kv_tokens * _KV_BYTES_PER_TOKEN / _GIB
    log.engine(f"Available KV cache memory: {kv_gib:.2f} GiB", "gpu_worker.py:298")
    if config.failing("kv-too-small") or kv_tokens < length:
        available = kv_gib if kv_tokens < length else length * _KV_BYTES_PER_TOKEN / _GIB * 0.38
        estimated = int(available * _GIB / _KV_BYTES_PER_TOKEN) // 16 * 16
        needed = length * _KV_BYTES_PER_TOKEN / _GIB
        _vllm_engine_failed(
            state,
            f"ValueError: To serve at least one request with the model's max seq len ({length}), "
            f"({needed:.2f} GiB KV cache is needed, which is larger than the available KV cache "
            f"memory ({available:.2f} GiB). Based on the available memory, the estimated maximum "
            f"model length is {estimated}. Try increasing `gpu_memory_utilization` or decreasing "
            "`max_model_len` when initializing the engine. See "
            "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
        )
        return 1
    log.engine(
        f"GPU KV cache size: {kv_tokens:,} tokens, Maximum concurrency for {length:,} tokens per "
        f"request: {math.floor(kv_tokens / length * 100) / 100:.2f}x",
        "kv_cache_utils.py:1291",
    )
    await state.sleep(delay * 0.1)
    log.engine(
        f"init engine (profile, create kv cache, warmup model) took {max(delay * 0.3, 0.01):.2f} seconds",
        "core.py:210",
    )
    log.api("Supported_tasks: ['generate']", "api_server.py:1611")
    return None


def _stopping(state: SimState) -> bool:
    return state.stop is not None and state.stop.is_set()


def _vllm_engine_failed(state: SimState, error: str, source: str = "core.py:708") -> None:
    log = state.vllm_log
    if source != "core.py:708":
        log.engine(error, source, "ERROR")
    log.engine("EngineCore failed to start.", "core.py:708", "ERROR")
    log.engine("Traceback (most recent call last):", "core.py:708", "ERROR")
    log.engine(
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 699, in run_engine_core',
        "core.py:708",
        "ERROR",
    )
    log.engine("    engine_core = EngineCoreProc(*args, **kwargs)", "core.py:708", "ERROR")
    if source == "core.py:708":
        log.engine(error, source, "ERROR")
    log.raw(f"(EngineCore pid={log.engine_pid}) Process EngineCore:")
    log.raw(f"(APIServer pid={log.pid}) Traceback (most recent call last):")
    log.raw(f'(APIServer pid={log.pid})   File "/usr/local/bin/vllm", line 10, in <module>')
    log.raw(f"(APIServer pid={log.pid})     sys.exit(main())")
    log.raw(
        f"(APIServer pid={log.pid}) RuntimeError: Engine core initialization failed. "
        "See root cause above. Failed core proc(s): {}"
    )


def vllm_routes(state: SimState, port: int) -> None:
    log = state.vllm_log
    log.api(f"Starting vLLM server on http://{state.config.host}:{port}", "api_server.py:602")
    log.api("Available routes are:", "launcher.py:37")
    for path, methods in LOGGED_ROUTES:
        log.api(f"Route: {path}, Methods: {methods}", "launcher.py:46")
