"""Ollama's log rules: pull and load failures, CPU offload, and what it is doing while it loads.

Wording comes from Ollama's sources (server/sched.go, llm/server.go) and real logs
(tests/data/logs/README.md). The cleaning and matching machinery is in msmall.diagnose.
"""

from __future__ import annotations

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
    fmt,
    num,
    to_gib,
)

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")

_LOGFMT_OFFLOAD = re.compile(r"msg=offload\b[^\n]*")


def _ollama_not_found(m: re.Match[str], ctx: Ctx) -> Found:
    figures: dict[str, float | int | str] = {}
    pulled = re.findall(r"ollama (?:pull|run) (\S+)", ctx.before())
    what = "that model tag"
    if pulled:
        figures["model"] = pulled[-1]
        what = pulled[-1]
    return Found(
        f"The Ollama registry has no {what}: the name or tag is wrong.",
        "Use a published tag such as mistral-small3.1:24b (Q4_K_M) or "
        "mistral-small3.1:24b-instruct-2503-q8_0 (`--set ollama_tag=...`).",
        figures,
    )


def _ollama_too_old(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "This Ollama is too old for the model (HTTP 412 from the registry).",
        "Upgrade Ollama (0.6.5 or newer for Mistral Small 3.1): "
        "`curl -fsSL https://ollama.com/install.sh | sh`.",
        {},
    )


def _ollama_ram(m: re.Match[str], ctx: Ctx) -> Found:
    need, have = to_gib(m["need"], m["nu"]), to_gib(m["have"], m["hu"])
    return Found(
        f"Ollama needs {fmt(need)} GiB of system memory for the model but only {fmt(have)} GiB "
        "is available.",
        "Close other programs or unload models (`ollama stop NAME`), or use the 4-bit tag "
        "with a shorter context (`--set max_model_len=8192`).",
        {"required_gib": need, "available_gib": have},
    )


def _ollama_oom(m: re.Match[str], ctx: Ctx) -> Found:
    figures: dict[str, float | int | str] = {}
    alloc = re.findall(r"allocating ([\d.]+) (MiB|GiB) on device (\d+)", ctx.text)
    if alloc:
        figures["tried_gib"] = to_gib(alloc[-1][0], alloc[-1][1])
        figures["gpu"] = int(alloc[-1][2])
    after = "after the model loaded" if "runner started" in ctx.before() else "while loading"
    return Found(
        f"The llama runner ran out of GPU memory {after}: Ollama's memory estimate for this "
        "model is too low.",
        "Shorten the context with `--set max_model_len=8192` (OLLAMA_CONTEXT_LENGTH), or "
        "use the 4-bit tag (`--profile 4090-q4`).",
        figures,
    )


def _offload_figures(m: re.Match[str]) -> tuple[int, int]:
    if m["done"]:
        return int(m["done"]), int(m["total"])
    line = m[0]
    total = re.search(r"layers\.model=(\d+)", line)
    done = re.search(r"layers\.offload=(\d+)", line)
    return (int(done[1]) if done else 0), (int(total[1]) if total else 0)


def _ollama_cpu_offload(m: re.Match[str], ctx: Ctx) -> Found | None:
    # The latest load decides, as in parse_ollama_offload: a partial offload that a later,
    # complete one replaced (a retry with a shorter context, say) is history, not the cause.
    if m.re.search(ctx.text, m.end()):
        return None
    done, total = _offload_figures(m)
    if not total or done >= total:
        return None
    return Found(
        f"Only {done} of {total} layers fit on the GPU; Ollama runs the other {total - done} on "
        "the CPU, which is many times slower.",
        "Shorten the context with `--set max_model_len=8192`, or use the 4-bit tag "
        "(`--profile 4090-q4`).",
        {"layers_offloaded": done, "layers_total": total},
    )


def _runner_died(m: re.Match[str], ctx: Ctx) -> Found:
    why = m["why"].strip()
    return Found(
        f"Ollama's llama runner exited: {why}.",
        "Shorten the context with `--set max_model_len=8192` and retry; `ollama ps` and the "
        "server log show what was loaded.",
        {"reason": why},
    )


OLLAMA_RULES: tuple[Rule, ...] = (
    Rule(
        "ollama-pull-not-found",
        re.compile(
            r"pull model manifest: (?:file does not exist|[^\n]*not found)|manifest unknown"
        ),
        _ollama_not_found,
    ),
    Rule(
        "ollama-too-old",
        re.compile(r"requires a newer version of Ollama"),
        _ollama_too_old,
    ),
    Rule(
        "ollama-ram",
        re.compile(
            r"model requires more system memory \((?P<need>[\d.]+) ?(?P<nu>[KMGT]i?B)\) than is "
            r"available \((?P<have>[\d.]+) ?(?P<hu>[KMGT]i?B)\)"
        ),
        _ollama_ram,
    ),
    Rule(
        "ollama-oom",
        re.compile(
            r"CUDA error: out of memory|cudaMalloc failed: out of memory|"
            r"(?:ROCm|HIP) error: out of memory|llama runner process has terminated:[^\n]*out of memory"
        ),
        _ollama_oom,
    ),
    NCCL_RULE,
    Rule(
        "ollama-runner-died",
        re.compile(r"llama runner process has terminated: (?P<why>[^\n\"]+)"),
        _runner_died,
    ),
    Rule(
        "ollama-cpu-offload",
        re.compile(
            r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU|msg=offload\b[^\n]*layers\.offload=\d+[^\n]*"
        ),
        _ollama_cpu_offload,
        fatal=False,
    ),
)


OLLAMA_ACTIVITY: tuple[Activity, ...] = (
    (
        re.compile(r"llama runner started in ([\d.]+) seconds"),
        lambda m: f"runner started in {num(m[1]):.1f} s",
    ),
    (
        re.compile(r"Listening on (\S+) \(version ([^)]+)\)"),
        lambda m: f"Ollama {m[2]} listening on {m[1]}",
    ),
    (
        re.compile(r"offloaded (\d+)/(\d+) layers to GPU"),
        lambda m: f"offloaded {m[1]}/{m[2]} layers to GPU",
    ),
    (
        re.compile(r"msg=offload\b.*?layers\.model=(\d+).*?layers\.offload=(\d+)"),
        lambda m: f"offloading {m[2]}/{m[1]} layers to GPU",
    ),
    (
        re.compile(r"model load progress ([\d.]+)"),
        lambda m: f"loading model: {round(num(m[1]) * 100)}%",
    ),
    (re.compile(r"status=\"llm server loading model\""), lambda m: "loading model"),
    (
        re.compile(r"msg=\"new model will fit in available VRAM[^\n]*required=\"([^\"]+)\""),
        lambda m: f"loading model (needs {m[1]} of VRAM)",
    ),
    (re.compile(r"msg=\"starting llama server\""), lambda m: "starting the llama runner"),
    (
        re.compile(r"msg=\"model weights\" buffer=(\w+) size=\"([^\"]+)\""),
        lambda m: f"weights on {m[1]}: {m[2]}",
    ),
    (
        re.compile(
            r"msg=\"inference compute\"[^\n]*name=\"([^\"]+)\" total=\"([^\"]+)\" available=\"([^\"]+)\""
        ),
        lambda m: f"GPU {m[1]}: {m[3]} of {m[2]} free",
    ),
    (re.compile(r"^pulling manifest$"), lambda m: "pulling manifest"),
    (
        re.compile(r"^pulling ([0-9a-f]{12}):\s+(\d+)%[^\d]*([\d.]+ [KMGT]?B)"),
        lambda m: f"pulling {m[1]}: {m[2]}% of {m[3]}",
    ),
    (re.compile(r"^verifying sha256 digest$"), lambda m: "verifying download"),
    (re.compile(r"^writing manifest$"), lambda m: "writing manifest"),
    (re.compile(r"^success$"), lambda m: "pull complete"),
)


def parse_ollama_offload(log_text: str) -> dict | None:
    """How many layers Ollama put on the GPU, from the last report in the log.

    {"layers_offloaded": a, "layers_total": b}, or None if the log has no offload line.
    Reads llama.cpp's "offloaded 41/41 layers to GPU" and the scheduler's logfmt
    "msg=offload ... layers.model=41 layers.offload=41", hard-wrapped or not.
    """
    best: tuple[int, int, int] | None = None  # (position, offloaded, total)
    text = "\n".join(clean_lines(log_text))
    for m in _OFFLOADED.finditer(text):
        best = (m.start(), int(m[1]), int(m[2]))
    for m in _LOGFMT_OFFLOAD.finditer(text):
        total = re.search(r"layers\.model=(\d+)", m[0])
        done = re.search(r"layers\.offload=(\d+)", m[0])
        if total and done and (best is None or m.start() > best[0]):
            best = (m.start(), int(done[1]), int(total[1]))
    if best is None:
        return None
    return {"layers_offloaded": best[1], "layers_total": best[2]}


LOG_RULES = LogRules(diagnosis=COMMON_RULES + OLLAMA_RULES, activity=OLLAMA_ACTIVITY)
