"""vLLM's log rules: what its startup failures look like, and what it is doing while it loads.

Wording comes from vLLM's sources and from real logs (tests/data/logs/README.md names them); each
rule says which version prints what. The cleaning and matching machinery is in msmall.diagnose.
"""

from __future__ import annotations

import math
import re

from msmall.diagnose import (
    COMMON_RULES,
    NCCL_RULE,
    Activity,
    Ctx,
    Found,
    LogRules,
    Rule,
    clean_lines,
    floor_to,
    fmt,
    last_activity,
    line_at,
    num,
    to_gib,
    to_int,
)

# Figures several rules read.
_MODEL_LOADED = re.compile(
    r"(?:Model loading took|Loading model weights took|model weights took) ([\d.]+) ?(GiB|GB|MiB)"
)

_KV_MEMORY = re.compile(r"Available KV cache memory: (-?[\d.]+) GiB")
# torch 2.1 printed "total capacty" (a typo, fixed later): both spellings are read.
# torch's format_size (c10/cuda/CUDACachingAllocator.cpp) prints "N bytes" below 1 KiB, e.g.
# "of which 0 bytes is free".
_OOM_FIGURES = (
    ("tried_gib", re.compile(r"Tried to allocate (?P<v>[\d.]+) (?P<u>[KMGT]iB|bytes)")),
    ("total_gib", re.compile(r"total capaci?ty of (?P<v>[\d.]+) (?P<u>[KMGT]iB|bytes)")),
    ("total_gib", re.compile(r"(?P<v>[\d.]+) (?P<u>[KMGT]iB|bytes) total capacity")),
    ("free_gib", re.compile(r"of which (?P<v>[\d.]+) (?P<u>[KMGT]iB|bytes) is free")),
    ("free_gib", re.compile(r"(?P<v>[\d.]+) (?P<u>[KMGT]iB|bytes) free\b")),
)

# One-line form (late 2025 on, 0.33): "GPU KV cache size: 39,120 tokens, Maximum concurrency for
# 32,768 tokens per request: 1.19x". Up to 0.12 the two halves are separate lines, so each half
# has its own pattern. DeepSeek sparse attention says "Maximum DSA sparse concurrency".
_KV_TOKENS = re.compile(r"GPU KV cache size: (?P<tokens>[\d,]+) tokens")

_KV_CONCURRENCY = re.compile(
    r"Maximum (?:[\w ]+ )?concurrency for (?P<len>[\d,]+) tokens per request: (?P<x>[\d.]+)x"
)


_SMALLER_PROFILES = (
    "`--profile 2x4090-fp8-vision` (FP8, two 24 GB cards) or `--profile 4090-q4` (4-bit, one card)"
)


_SMALLER_WEIGHTS = f"use smaller weights: {_SMALLER_PROFILES}"


def _limit_mm(m: re.Match[str], ctx: Ctx) -> Found:
    value = m["value"] or m["value2"] or ""
    figures: dict[str, float | int | str] = {"value": value} if value else {}
    if value.startswith("{"):
        return Found(
            f"This vLLM is older than 0.10 and wants --limit-mm-per-prompt as image=N, not "
            f"the JSON {value}.",
            "Tell msmall which vLLM is installed with `--vllm-version X.Y.Z` so it writes the "
            "form that version accepts.",
            figures,
        )
    shown = f" '{value}'" if value else ""
    return Found(
        f"vLLM 0.10 and newer want --limit-mm-per-prompt as JSON ('{{\"image\": N}}'), but got"
        f"{shown}, the form of 0.9 and older.",
        "Tell msmall which vLLM is installed with `--vllm-version X.Y.Z` (0.10 or newer) so it "
        "writes the JSON form.",
        figures,
    )


def _unknown_argument(m: re.Match[str], ctx: Ctx) -> Found:
    args = m["args"].strip()
    return Found(
        f"The installed vLLM does not know {args} and refused to start.",
        f"Remove {args} from serving.extra_args, or tell msmall the installed version with "
        "`--vllm-version X.Y.Z` so it only writes flags that version accepts.",
        {"arguments": args},
    )


def _invalid_argument(m: re.Match[str], ctx: Ctx) -> Found:
    flag, why = m["flag"], m["why"].strip()
    return Found(
        f"vLLM rejected the value of {flag}: {why.rstrip('.')}.",
        f"Check the profile setting behind {flag} (`msmall serve --dry-run` prints the command), "
        "or pass `--vllm-version X.Y.Z` so msmall writes what the installed vLLM accepts.",
        {"flag": flag},
    )


def _arch_unsupported(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        f"This vLLM does not know the model architecture {m['arch'].strip()}: Mistral Small 3.1 "
        "needs vLLM 0.8 or newer.",
        "Upgrade vLLM (`pip install -U vllm`) or use the docker backend, which runs a current image.",
        {"architecture": m["arch"].strip(" '\"")},
    )


def _tokenizer_format(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "vLLM was told to use the Mistral tokenizer (--tokenizer-mode mistral) but the model "
        "repo has no tekken.json or tokenizer.model.v* file.",
        "Use `--set hf_format=hf` for HF-format repos (RedHatAI and other quantized builds) so "
        "msmall leaves out the Mistral format flags.",
        {},
    )


def _weights_format(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "vLLM found no weights in the format it was told to load: the Mistral format "
        "(consolidated.safetensors, params.json) was asked of an HF-only repo, or the download "
        "is incomplete.",
        "Use `--set hf_format=hf` for HF-format repos (RedHatAI and other quantized builds); "
        "otherwise delete the partial download from the Hugging Face cache and retry.",
        {},
    )


def _max_len_too_long(m: re.Match[str], ctx: Ctx) -> Found:
    asked, derived = to_int(m["asked"]), to_int(m["derived"])
    return Found(
        f"max_model_len {asked:,} is longer than the model's own limit of {derived:,} tokens.",
        f"Use `--set max_model_len={derived}` or less.",
        {"max_model_len": asked, "model_max_len": derived},
    )


def _free_memory(m: re.Match[str], ctx: Ctx) -> Found:
    # gpu_worker.py (0.9 .. 0.33): "Free memory on device [cuda:0] (1.53/22.05 GiB) on startup is
    # less than desired GPU memory utilization (0.9, 19.84 GiB)."
    free, total = num(m["free"]), num(m["total"])
    util, desired = num(m["util"]), num(m["desired"])
    device = m["device"] or "the GPU"
    figures: dict[str, float | int | str] = {
        "free_gib": free,
        "total_gib": total,
        "gpu_memory_utilization": util,
        "desired_gib": desired,
    }
    if m["device"]:
        figures["device"] = m["device"]
    cause = (
        f"Only {fmt(free)} of {fmt(total)} GiB is free on {device}, but vLLM wants "
        f"{fmt(desired)} GiB (gpu_memory_utilization {util:g}): other processes are using it."
    )
    # The largest utilisation the free memory allows, one point under to leave slack.
    suggested = math.floor(round(free / total * 100, 6)) / 100 - 0.01 if total else 0.0
    if suggested >= 0.5:
        figures["suggested_gpu_memory_utilization"] = round(suggested, 2)
        fix = (
            f"Use `--set gpu_memory_utilization={suggested:.2f}`, or stop the other processes "
            "on the GPU (`nvidia-smi` lists them)."
        )
    else:
        fix = (
            f"Stop the other processes on {device} (`nvidia-smi` lists them): with "
            f"{fmt(free)} GiB free the model cannot load."
        )
    return Found(cause, fix, figures)


def _suggest_len(length: int) -> int:
    # Round down to a multiple of 256 tokens; msmall's profiles accept 256 and up.
    return floor_to(length, 256) if length >= 512 else length


def _kv_too_small(m: re.Match[str], ctx: Ctx) -> Found:
    # kv_cache_utils.py (V1 engine, 0.8 .. 0.33): "To serve at least one request with the
    # models's max seq len (262144), (36.0 GiB KV cache is needed, which is larger than the
    # available KV cache memory (6.94 GiB). Based on the available memory, the estimated maximum
    # model length is 50512." ("models's" up to late 2025, "model's" after.)
    max_len, needed, available = to_int(m["max_len"]), num(m["needed"]), num(m["available"])
    figures: dict[str, float | int | str] = {
        "max_model_len": max_len,
        "needed_gib": needed,
        "available_gib": available,
    }
    if m["estimate"]:
        estimate = to_int(m["estimate"])
        figures["estimated_max_len"] = estimate
        suggested = estimate
        how = "the longest vLLM says fits"
    else:
        # The line was cut before vLLM's estimate: KV memory grows linearly with length.
        suggested = _suggest_len(int(max_len * available / needed)) if needed else 0
        how = "about the longest that fits"
    figures["suggested_max_len"] = suggested
    cause = (
        f"One request at max_model_len {max_len:,} needs {fmt(needed)} GiB of KV cache, but "
        f"only {fmt(available)} GiB is left after the weights."
    )
    if suggested >= 256:
        fix = (
            f"Use `--set max_model_len={suggested}` ({how}), or make room with "
            "`--set kv_cache_dtype=fp8`."
        )
    else:
        fix = f"Almost nothing is left for the KV cache: {_SMALLER_WEIGHTS}."
    return Found(cause, fix, figures)


def _kv_too_small_v0(m: re.Match[str], ctx: Ctx) -> Found:
    # V0 engine (up to 0.7): "The model's max seq len (32768) is larger than the maximum number
    # of tokens that can be stored in KV cache (20464)."
    max_len, fits = to_int(m["max_len"]), to_int(m["tokens"])
    suggested = _suggest_len(fits)
    return Found(
        f"max_model_len {max_len:,} does not fit: the KV cache holds only {fits:,} tokens.",
        f"Use `--set max_model_len={suggested}`, or make room with `--set kv_cache_dtype=fp8`.",
        {"max_model_len": max_len, "kv_cache_tokens": fits, "suggested_max_len": suggested},
        kind="kv-cache-too-small",
    )


def _weights_gib(text: str) -> float | None:
    found = _MODEL_LOADED.findall(text)
    return to_gib(*found[-1]) if found else None


def _no_cache_blocks(m: re.Match[str], ctx: Ctx) -> Found:
    # kv_cache_utils.py / V0 block manager: "No available memory for the cache blocks. Try
    # increasing `gpu_memory_utilization` when initializing the engine."
    figures: dict[str, float | int | str] = {}
    details = []
    weights = _weights_gib(ctx.text)
    if weights is not None:
        figures["weights_gib"] = weights
        details.append(f"the weights took {fmt(weights)} GiB")
    kv = _KV_MEMORY.findall(ctx.text)
    if kv:
        figures["available_gib"] = num(kv[-1])
        details.append(f"{fmt(num(kv[-1]))} GiB was left for it")
    detail = f" ({', '.join(details)})" if details else ""
    return Found(
        f"After loading the weights no GPU memory is left for the KV cache{detail}.",
        f"Raise `--set gpu_memory_utilization=0.95` if nothing else uses the GPU, or "
        f"{_SMALLER_WEIGHTS}.",
        figures,
    )


def _oom_figures(text: str) -> tuple[dict[str, float | int | str], set[str]]:
    """The figures in GiB, and which of them are a few KiB that round to 0.00."""
    figures: dict[str, float | int | str] = {}
    tiny: set[str] = set()
    for key, pattern in _OOM_FIGURES:
        found = pattern.search(text)
        if found:
            figures[key] = to_gib(found["v"], found["u"])
            if figures[key] == 0 and num(found["v"]) > 0:
                tiny.add(key)
    gpu = re.search(r"\bGPU (\d+)\b", text)
    if gpu:
        figures["gpu"] = int(gpu[1])
    return figures, tiny


def _amount(figures: dict[str, float | int | str], tiny: set[str], key: str) -> str:
    # Rounded away, not nothing: "allocating 0 GiB more failed" would read as a bug.
    return "less than 0.01" if key in tiny else fmt(float(figures[key]))


def _oom(m: re.Match[str], ctx: Ctx) -> Found:
    # torch >= 2.1: "CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total capacity
    # of 93.09 GiB of which 739.81 MiB is free." Older torch: "(GPU 0; 10.73 GiB total capacity;
    # 9.85 GiB already allocated; 46.44 MiB free; ...)". vLLM >= 0.11 wraps load-time OOM in
    # "Failed to load model - not enough GPU memory. ... (original error: CUDA out of memory ...)".
    line = line_at(ctx.text, ctx.pos)
    figures, tiny = _oom_figures(line)
    parts = []
    if "tried_gib" in figures:
        parts.append(f"allocating {_amount(figures, tiny, 'tried_gib')} GiB more failed")
    if "total_gib" in figures and "free_gib" in figures:
        parts.append(
            f"{_amount(figures, tiny, 'free_gib')} of {_amount(figures, tiny, 'total_gib')} GiB was free"
        )
    detail = f" ({'; '.join(parts)})" if parts else ""
    loaded = _weights_gib(ctx.before())
    load_failed = "Failed to load model" in line or "weights" in line.lower()
    if loaded is None or load_failed:
        return Found(
            f"The GPU ran out of memory while loading the weights{detail}.",
            f"The weights do not fit: {_SMALLER_PROFILES}, or "
            "spread them over more GPUs with `--set tensor_parallel_size=2`.",
            figures,
            kind="oom-loading",
        )
    figures["weights_gib"] = loaded
    return Found(
        f"The GPU ran out of memory after the weights ({fmt(loaded)} GiB) were loaded, while "
        f"profiling or capturing CUDA graphs{detail}.",
        "Leave more headroom with `--set gpu_memory_utilization=0.85`, or lower "
        "`--set max_num_seqs=8`.",
        figures,
        kind="oom-after-load",
    )


def _engine_init_failed(m: re.Match[str], ctx: Ctx) -> Found:
    # v1 engine: 0.8 "EngineCore hit an exception" / "EngineCore failed to start.",
    # 0.9+ "RuntimeError: Engine core initialization failed. See root cause above. Failed core
    # proc(s): {'EngineCore_0': 1}". Only a fallback: a specific cause above it wins.
    figures: dict[str, float | int | str] = {}
    procs = re.search(r"Failed core proc\(s\): (\{[^}\n]*\})", ctx.text)
    if procs:
        figures["failed_procs"] = procs[1]
    weights = _weights_gib(ctx.before())
    if weights is not None:
        figures["weights_gib"] = weights
    kv = parse_kv_cache(ctx.before())
    if kv:
        figures["kv_cache_tokens"] = kv["tokens"]
    step = last_activity(ctx.before(), ctx.activity)
    reached = f" (last step reached: {step})" if step else ""
    return Found(
        f"vLLM's engine core failed during startup{reached}; the log shows no more specific cause.",
        "Read the first ERROR line above 'Engine core initialization failed' in the full log "
        "(`msmall logs`), and rerun with that cause fixed.",
        figures,
    )


def _tool_parser(m: re.Match[str], ctx: Ctx) -> Found:
    # mistral_tool_parser.py: "Error trying to handle streaming tool call." (streaming),
    # "Error in extracting tool call from response." (non-streaming).
    return Found(
        "vLLM's Mistral tool parser could not read a tool call the model emitted after "
        "[TOOL_CALLS]; that request got plain text or an error.",
        "Keep `--tokenizer-mode mistral` with `--tool-call-parser mistral` (msmall's default for "
        "Mistral-format repos), or upgrade vLLM (`--vllm-version`), whose parser handles more.",
        {},
    )


def _tool_choice_off(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "A client asked for tool calls but the server runs without tool parsing "
        "(--enable-auto-tool-choice and --tool-call-parser).",
        "Serve with tools on: `--set tools=true`.",
        {},
    )


def _kv_activity(m: re.Match[str]) -> str:
    line = m.string
    tokens = to_int(m["tokens"])
    conc = _KV_CONCURRENCY.search(line)
    if conc:
        return f"KV cache: {tokens:,} tokens ({num(conc['x']):.2f}x concurrency at {conc['len']})"
    return f"KV cache: {tokens:,} tokens"


def _weights_loaded(m: re.Match[str]) -> str:
    return f"weights loaded: {to_gib(m[1], m[2]):.2f} GiB"


VLLM_RULES: tuple[Rule, ...] = (
    Rule(
        "limit-mm-format",
        re.compile(
            r"error: argument --limit[-_]mm[-_]per[-_]prompt[^:\n]*: (?:Value (?P<value>\S+) "
            r"cannot be converted|invalid \w+ value: '(?P<value2>[^']*)'|[^\n]*)"
        ),
        _limit_mm,
    ),
    Rule(
        "unknown-argument",
        re.compile(r"error: unrecognized arguments: (?P<args>[^\n]+)"),
        _unknown_argument,
    ),
    Rule(
        "invalid-argument",
        re.compile(r"error: argument (?P<flag>--[\w-]+)[^:\n]*: (?P<why>[^\n]+)"),
        _invalid_argument,
    ),
    Rule(
        "vllm-too-old",
        re.compile(r"Model architectures? (?P<arch>\[[^\]\n]*\]|\S+) (?:are|is) not supported"),
        _arch_unsupported,
    ),
    Rule(
        "tokenizer-format",
        re.compile(r"Make sure that a Mistral tokenizer is present in"),
        _tokenizer_format,
    ),
    Rule(
        "weights-format",
        re.compile(
            r"Cannot find any model weights with|"
            r"params\.json[^\n]*(?:Entry Not Found|not found|does not exist|No such file)|"
            r"(?:Entry Not Found|does not appear to have a file named)[^\n]*params\.json"
        ),
        _weights_format,
    ),
    Rule(
        "max-len-too-long",
        re.compile(
            r"User-specified max_model_len \((?P<asked>\d+)\) is greater than the derived "
            r"max_model_len \(\w+=(?P<derived>\d+)"
        ),
        _max_len_too_long,
    ),
    Rule(
        "free-memory",
        re.compile(
            r"Free memory on device(?: (?P<device>[\w:]+))? \((?P<free>[\d.]+)/(?P<total>[\d.]+) "
            r"GiB\) on startup is less than desired GPU memory utilization \((?P<util>[\d.]+), "
            r"(?P<desired>[\d.]+) GiB\)"
        ),
        _free_memory,
    ),
    Rule(
        "kv-cache-too-small",
        re.compile(
            r"max seq len \((?P<max_len>[\d,]+)\), \(?(?P<needed>[\d.]+) GiB KV ?cache is needed, "
            r"which is larger than the available KV cache memory \((?P<available>[\d.]+) GiB\)"
            r"(?:\. Based on the available memory, the estimated maximum model length is "
            r"(?P<estimate>[\d,]+))?"
        ),
        _kv_too_small,
    ),
    Rule(
        "kv-cache-too-small",
        re.compile(
            r"max seq len \((?P<max_len>\d+)\) is larger than the maximum number of tokens that "
            r"can be stored in KV cache \((?P<tokens>\d+)\)"
        ),
        _kv_too_small_v0,
    ),
    Rule(
        "no-cache-blocks",
        re.compile(r"No available memory for the cache blocks"),
        _no_cache_blocks,
    ),
    Rule(
        "oom-loading",
        re.compile(
            r"Failed to load model - not enough GPU memory|CUDA out of memory|"
            r"CUDA error: out of memory|OutOfMemoryError"
        ),
        _oom,
    ),
    NCCL_RULE,
    Rule(
        "engine-init-failed",
        re.compile(
            # Not the `raise RuntimeError("Engine core ...` source line a traceback quotes.
            r"(?<!\(\")(?:Engine core initialization failed|EngineCore failed to start|"
            r"EngineCore hit an exception)"
        ),
        _engine_init_failed,
    ),
    Rule(
        "tool-parser-error",
        re.compile(
            r"Error trying to handle streaming tool call|Error in extracting tool call from response"
        ),
        _tool_parser,
        fatal=False,
    ),
    Rule(
        "tool-choice-disabled",
        re.compile(r"\"auto\" tool choice requires --enable-auto-tool-choice"),
        _tool_choice_off,
        fatal=False,
    ),
)


VLLM_ACTIVITY: tuple[Activity, ...] = (
    (re.compile(r"Application startup complete"), lambda m: "ready"),
    (
        re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on (\S+)"),
        lambda m: f"API server starting on {m[1]}",
    ),
    (re.compile(r"Uvicorn running on (\S+)"), lambda m: f"API server listening on {m[1]}"),
    (_KV_TOKENS, _kv_activity),
    (
        _KV_CONCURRENCY,
        lambda m: f"max concurrency {num(m['x']):.2f}x at {m['len']} tokens per request",
    ),
    (_KV_MEMORY, lambda m: f"KV cache memory: {num(m[1]):.2f} GiB"),
    (_MODEL_LOADED, _weights_loaded),
    (
        re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)"),
        lambda m: f"loading weights: {m[2]}/{m[3]} shards",
    ),
    (
        re.compile(r"Loading weights took ([\d.]+) s"),
        lambda m: f"weights read in {num(m[1]):.0f} s",
    ),
    (
        re.compile(r"Starting to load model|Loading model weights|Loading weights"),
        lambda m: "loading weights",
    ),
    (
        re.compile(r"Fetching \d+ files|Downloading [^\n]*safetensors"),
        lambda m: "downloading weights",
    ),
    (
        re.compile(r"Graph capturing finished in ([\d.]+) secs?, took ([\d.]+) GiB"),
        lambda m: f"CUDA graphs captured in {m[1]} s ({m[2]} GiB)",
    ),
    (re.compile(r"Capturing (?:CUDA )?graph"), lambda m: "capturing CUDA graphs"),
    (
        re.compile(r"torch\.compile takes ([\d.]+) s in total"),
        lambda m: f"torch.compile done in {num(m[1]):.0f} s",
    ),
    (
        re.compile(r"Dynamo bytecode transform|Compiling a graph|Directly load the compiled graph"),
        lambda m: "compiling the model (torch.compile)",
    ),
    (
        re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
        lambda m: f"engine initialised in {num(m[1]):.0f} s",
    ),
    (re.compile(r"Multi-modal warmup completed"), lambda m: "multi-modal warmup done"),
    (re.compile(r"Memory profiling takes|profiling run"), lambda m: "profiling memory"),
    (
        re.compile(r"Resolved architecture: (\w+)"),
        lambda m: f"model architecture {m[1]}",
    ),
    (re.compile(r"Using max model len (\d+)"), lambda m: f"max model len {int(m[1]):,}"),
    (re.compile(r"Automatically detected platform (\w+)"), lambda m: f"starting on {m[1]}"),
    (
        re.compile(
            r"Avg generation throughput: ([\d.]+) tokens/s, Running: (\d+) reqs?, Waiting: (\d+) "
            r"reqs?, GPU KV cache usage: ([\d.]+)%"
        ),
        lambda m: (
            f"generating {num(m[1]):.1f} tokens/s, {m[2]} running, {m[3]} waiting, "
            f"KV cache {m[4]}% used"
        ),
    ),
)


def parse_kv_cache(log_text: str) -> dict | None:
    """The KV cache vLLM sized at startup, from the last report in the log.

    {"tokens": int, "concurrency": float | None, "max_len": int | None,
    "available_gib": float | None}, or None before vLLM has logged the size.
    """
    text = "\n".join(clean_lines(log_text))
    tokens = _KV_TOKENS.findall(text)
    if not tokens:
        return None
    conc = list(_KV_CONCURRENCY.finditer(text))
    memory = _KV_MEMORY.findall(text)
    return {
        "tokens": to_int(tokens[-1]),
        "concurrency": num(conc[-1]["x"]) if conc else None,
        "max_len": to_int(conc[-1]["len"]) if conc else None,
        "available_gib": num(memory[-1]) if memory else None,
    }


# Generic rules first: a missing GPU runtime or a gated repo explains the vLLM errors after it.
LOG_RULES = LogRules(diagnosis=COMMON_RULES + VLLM_RULES, activity=VLLM_ACTIVITY)
