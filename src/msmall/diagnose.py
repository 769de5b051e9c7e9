"""Engine logs -> plain-language cause and fix, and what the engine is doing right now.

Three entry points:

- ``diagnose(log_text, backend)`` reads a whole log (or its tail) after an engine died or a
  container failed to start, and names the root cause with the figures from the log and one
  concrete msmall action.
- ``engine_activity(line, backend)`` turns one log line into a short status worth showing while
  the user waits (loading weights, KV cache size, capturing CUDA graphs, ready), None for noise.
- ``parse_kv_cache`` / ``parse_ollama_offload`` pull the numbers the fit and health checks want.

Logs arrive in many shapes, and all of them are cleaned the same way before matching: raw ANSI
colour codes and their caret-notation form as pasted into issues (``^[[0;36m``), the process
prefixes of vLLM >= 0.10 (``(EngineCore_DP0 pid=N)``, ``(APIServer pid=N)``), docker
``--timestamps`` RFC 3339 prefixes, CI ``[2026-01-28T23:59:42Z]`` prefixes, journald prefixes,
vLLM's own ``ERROR 01-28 15:59:42 [core.py:935]`` header, and lines that a terminal or a
commenter hard-wrapped (joined back before matching).

Wording comes from the engines' sources and from real logs (tests/data/logs/README.md names
them); each rule below says which version prints what.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "Diagnosis",
    "clean_lines",
    "diagnose",
    "engine_activity",
    "parse_kv_cache",
    "parse_ollama_offload",
]

VLLM_BACKENDS = ("vllm", "docker")
ALL_BACKENDS = ("vllm", "docker", "ollama", "simulator")

# Longest evidence line kept; the CUDA OOM message alone runs to 600 characters.
EVIDENCE_MAX = 400


@dataclass(frozen=True)
class Diagnosis:
    """What went wrong, in words a user can act on."""

    kind: str  # stable id, e.g. "free-memory"; tests and the CLI key on it
    cause: str  # one plain sentence with the figures from the log
    fix: str  # one plain sentence naming the msmall flag or the action
    evidence: str  # the log line that matched, cleaned of colours and prefixes
    figures: dict[str, float | int | str] = field(default_factory=dict)
    # False for problems the server survives (a tool-call parse error, layers left on the CPU).
    fatal: bool = True


# --------------------------------------------------------------------------------------------
# Cleaning: colours, prefixes, hard wraps
# --------------------------------------------------------------------------------------------

# `^[` is how terminals and issue pastes show ESC (0x1b).
_CARET_ESC = re.compile(r"\^\[(?=[\[\]()])")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z])")

# Prefixes stripped from the front of a line, repeatedly, in any order.
_PREFIXES = (
    # CI log viewers (Buildkite): "[2026-01-28T23:59:42Z] "
    re.compile(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\]\s*"),
    # docker logs --timestamps: "2026-05-12T07:51:36.069569496Z "
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)\s+"),
    # journald: "Apr 19 16:54:17 host ollama[1180]: " (month names are localised: "avril")
    re.compile(r"[^\W\d_]{3,}\.? {1,2}\d{1,2} \d\d:\d\d:\d\d \S+ [\w./-]+\[\d+\]: ?"),
    # docker compose: "vllm-1  | "
    re.compile(r"[\w.-]+-\d+\s+\| "),
    # vLLM process prefixes: 0.10.x "(EngineCore_0 pid=N)", 0.10.2+ "(EngineCore_DP0 pid=N)",
    # 2026 "(EngineCore pid=N)", "(APIServer pid=N)", Ray "(RayWorkerWrapper pid=N, ip=...)".
    re.compile(r"\([^()\n]*\bpid=\d+[^()\n]*\)\s*"),
    # torch distributed: "[rank0]: "
    re.compile(r"\[rank\d+\]:\s*"),
    # vLLM's header: "ERROR 01-28 15:59:42 [core.py:935] "; before 0.7 "INFO 10-01 10:05:31 x.py:226] "
    re.compile(
        r"(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) +\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? +"
        r"\[?[\w./-]+:\d+\] ?"
    ),
    # a paste that starts mid-header: "[multiproc_executor.py:492] "
    re.compile(r"\[[\w./-]+\.py:\d+\] ?"),
)

# A line a terminal wrapped is at least this wide (80-column terminals and wider).
_WRAP_MIN_WIDTH = 80
# What a genuine new line can start with, so it is never glued to a wide line before it.
_LINE_START = re.compile(
    r"(?:\.\.\.|Traceback|usage:|During handling|The above exception|Process |Loading |"
    r"Capturing |Fetching |Downloading |[\w.]*(?:Error|Exception|Warning|Interrupt)\b|"
    r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b|[\[(#$%>{]|time=|[\w.-]+: error:)"
)
_PROGRESS = re.compile(r"\d%\||it/s\]|s/it\]")
# Ollama logfmt continuation after a commenter hard-wrapped it: "  layers.offload=37 ..."
_LOGFMT_CONT = re.compile(r"\s+[\w.]+=\S")


def _strip_prefixes(line: str) -> tuple[str, bool]:
    """The line without its timestamp/process/level prefixes, and whether it had any."""
    had = False
    changed = True
    while changed:
        changed = False
        for pattern in _PREFIXES:
            m = pattern.match(line)
            if m and m.end() > 0:
                line = line[m.end() :]
                had = changed = True
    return line, had


def _physical_lines(text: str) -> list[str]:
    text = _ANSI.sub("", _CARET_ESC.sub("\x1b", text))
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        # tqdm redraws with \r: each redraw is its own line.
        parts = [part.rstrip() for part in line.split("\r") if part.strip()]
        lines.extend(parts or [""])
    return lines


def _continues_terminal_wrap(raw: str, prev_width: int, prev_prefixed: bool) -> bool:
    """A terminal copy breaks a long line mid-word: the rest arrives with no prefix at all."""
    return (
        prev_prefixed
        and prev_width >= _WRAP_MIN_WIDTH
        and not raw[:1].isspace()
        and not _LINE_START.match(raw)
        and not _PROGRESS.search(raw)
    )


def clean_lines(text: str) -> list[str]:
    """Logical log lines: colours and prefixes gone, hard-wrapped lines joined back."""
    out: list[str] = []
    prev_width = 0
    prev_prefixed = False
    for raw in _physical_lines(text):
        if not raw:  # a blank line ends any wrap
            prev_width, prev_prefixed = 0, False
            continue
        body, had_prefix = _strip_prefixes(raw)
        if out and not had_prefix and _continues_terminal_wrap(raw, prev_width, prev_prefixed):
            out[-1] += raw
            prev_width = len(raw)
            continue
        if out and " msg=" in out[-1] and _LOGFMT_CONT.match(raw):
            out[-1] += " " + raw.strip()
            prev_width, prev_prefixed = len(raw), False
            continue
        out.append(body.strip())
        prev_width, prev_prefixed = len(raw), had_prefix
    return out


def _clean_one(line: str) -> str:
    lines = [part for part in _physical_lines(line) if part]
    return _strip_prefixes(lines[-1])[0].strip() if lines else ""


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _gib(value: str, unit: str) -> float:
    """'739.81', 'MiB' -> 0.72 (GiB, two decimals)."""
    scale = {"b": 1 / 1024**3, "kib": 1 / 1024**2, "mib": 1 / 1024, "gib": 1.0, "tib": 1024.0}
    return round(_num(value) * scale.get(unit.lower(), 1.0), 2)


def _fmt(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _floor_to(value: float, step: int) -> int:
    return int(value // step * step)


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    text: str  # all logical lines joined with \n
    backend: str
    pos: int  # where the match starts in text

    def before(self) -> str:
        return self.text[: self.pos]


class _Found(NamedTuple):
    cause: str
    fix: str
    figures: dict[str, float | int | str]
    kind: str | None = None  # overrides the rule's kind (e.g. OOM before vs after loading)


# A builder gets the match and its context; None means "looked like it, but is not a problem".
Builder = Callable[[re.Match[str], _Ctx], "_Found | None"]


class _Rule(NamedTuple):
    kind: str
    pattern: re.Pattern[str]
    build: Builder
    backends: tuple[str, ...] = ALL_BACKENDS
    fatal: bool = True


_SMALLER_PROFILES = (
    "`--profile 2x4090-fp8-vision` (FP8, two 24 GB cards) or `--profile 4090-q4` (4-bit, one card)"
)
_SMALLER_WEIGHTS = f"use smaller weights: {_SMALLER_PROFILES}"


# --- Docker and the NVIDIA stack --------------------------------------------------------------


def _no_gpu_runtime(m: re.Match[str], ctx: _Ctx) -> _Found:
    driver = m["driver"]
    named = f' "{driver}"' if driver else ""
    return _Found(
        f"Docker could not hand the GPU to the container: it has no{named} device driver for "
        "--gpus (the NVIDIA Container Toolkit is missing or not configured).",
        "Install the NVIDIA Container Toolkit, then run `sudo nvidia-ctk runtime configure "
        "--runtime=docker` and `sudo systemctl restart docker`.",
        {"driver": driver},
    )


def _nvml_missing(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "The NVIDIA driver library (libnvidia-ml.so.1) was not found, so no GPU can be used: "
        "the host has no NVIDIA driver, or the container runtime cannot see it.",
        "Install the NVIDIA driver on the host and check that `nvidia-smi` works, then retry.",
        {"library": "libnvidia-ml.so.1"},
    )


def _driver_fix(ctx: _Ctx) -> str:
    if ctx.backend == "docker":
        return (
            "Use a `-cu129` image tag (e.g. vllm/vllm-openai:v0.33.0-cu129) for drivers older "
            "than R580, or update the NVIDIA driver to R580 or newer."
        )
    return (
        "Update the NVIDIA driver (R580+ for CUDA 13 builds), or install a vLLM build for the "
        "CUDA your driver supports (`nvidia-smi` shows it)."
    )


def _cuda_condition(m: re.Match[str], ctx: _Ctx) -> _Found:
    # nvidia-container-cli: "requirement error: unsatisfied condition: cuda>=12.9"
    figures: dict[str, float | int | str] = {"required_cuda": m["need"]}
    have = f" (it supports CUDA {m['have']})" if m["have"] else ""
    if m["have"]:
        figures["driver_cuda"] = m["have"]
    return _Found(
        f"The image needs CUDA {m['need']} or newer, which the host NVIDIA driver does not "
        f"support{have}.",
        _driver_fix(ctx),
        figures,
    )


def _cuda_error_code(m: re.Match[str], ctx: _Ctx) -> _Found:
    # CUDA error 803 (cudaErrorSystemDriverMismatch), 804 (cudaErrorCompatNotSupportedOnDevice),
    # 35 (cudaErrorInsufficientDriver): the runtime in the image is newer than the host driver.
    code = m["code"] or "35"
    return _Found(
        f"CUDA error {code}: the CUDA runtime that vLLM was built with is newer than the host "
        "NVIDIA driver supports.",
        _driver_fix(ctx),
        {"cuda_error": int(code)},
    )


def _torch_driver_old(m: re.Match[str], ctx: _Ctx) -> _Found:
    # torch: "The NVIDIA driver on your system is too old (found version 11040)."
    found = int(m["found"])
    cuda = f"{found // 1000}.{found % 1000 // 10}"
    return _Found(
        f"PyTorch says the NVIDIA driver is too old: it supports CUDA {cuda}, less than this "
        "vLLM build needs.",
        _driver_fix(ctx),
        {"driver_cuda": cuda},
    )


def _port_in_use(m: re.Match[str], ctx: _Ctx) -> _Found:
    port = next((m[g] for g in ("p1", "p2", "p3") if m[g]), None)
    figures: dict[str, float | int | str] = {}
    where = "the port"
    fix = "Stop whatever holds the port, or pick another with `--port N`."
    if port:
        figures["port"] = int(port)
        where = f"port {port}"
        fix = f"Stop whatever listens on {where} (`ss -ltnp`), or use `--port {int(port) + 1}`."
    return _Found(f"The server could not listen: {where} is already in use.", fix, figures)


def _hf_gated(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "Hugging Face refused the download: the model repo is gated and no valid token "
        "that accepted its licence was sent.",
        "Accept the licence on the model's Hugging Face page, then export HF_TOKEN with a token "
        "from that account and retry.",
        {},
    )


# --- Arguments (argparse errors exit 2 before anything loads) ---------------------------------


def _limit_mm(m: re.Match[str], ctx: _Ctx) -> _Found:
    value = m["value"] or m["value2"] or ""
    figures: dict[str, float | int | str] = {"value": value} if value else {}
    if value.startswith("{"):
        return _Found(
            f"This vLLM is older than 0.10 and wants --limit-mm-per-prompt as image=N, not "
            f"the JSON {value}.",
            "Tell msmall which vLLM is installed with `--vllm-version X.Y.Z` so it writes the "
            "form that version accepts.",
            figures,
        )
    shown = f" '{value}'" if value else ""
    return _Found(
        f"vLLM 0.10 and newer want --limit-mm-per-prompt as JSON ('{{\"image\": N}}'), but got"
        f"{shown}, the form of 0.9 and older.",
        "Tell msmall which vLLM is installed with `--vllm-version X.Y.Z` (0.10 or newer) so it "
        "writes the JSON form.",
        figures,
    )


def _unknown_argument(m: re.Match[str], ctx: _Ctx) -> _Found:
    args = m["args"].strip()
    return _Found(
        f"The installed vLLM does not know {args} and refused to start.",
        f"Remove {args} from serving.extra_args, or tell msmall the installed version with "
        "`--vllm-version X.Y.Z` so it only writes flags that version accepts.",
        {"arguments": args},
    )


def _invalid_argument(m: re.Match[str], ctx: _Ctx) -> _Found:
    flag, why = m["flag"], m["why"].strip()
    return _Found(
        f"vLLM rejected the value of {flag}: {why.rstrip('.')}.",
        f"Check the profile setting behind {flag} (`msmall serve --dry-run` prints the command), "
        "or pass `--vllm-version X.Y.Z` so msmall writes what the installed vLLM accepts.",
        {"flag": flag},
    )


def _arch_unsupported(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        f"This vLLM does not know the model architecture {m['arch'].strip()}: Mistral Small 3.1 "
        "needs vLLM 0.8 or newer.",
        "Upgrade vLLM (`pip install -U vllm`) or use the docker backend, which runs a current image.",
        {"architecture": m["arch"].strip(" '\"")},
    )


def _tokenizer_format(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "vLLM was told to use the Mistral tokenizer (--tokenizer-mode mistral) but the model "
        "repo has no tekken.json or tokenizer.model.v* file.",
        "Use `--set hf_format=hf` for HF-format repos (RedHatAI and other quantized builds) so "
        "msmall leaves out the Mistral format flags.",
        {},
    )


def _weights_format(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "vLLM found no weights in the format it was told to load: the Mistral format "
        "(consolidated.safetensors, params.json) was asked of an HF-only repo, or the download "
        "is incomplete.",
        "Use `--set hf_format=hf` for HF-format repos (RedHatAI and other quantized builds); "
        "otherwise delete the partial download from the Hugging Face cache and retry.",
        {},
    )


def _max_len_too_long(m: re.Match[str], ctx: _Ctx) -> _Found:
    asked, derived = _int(m["asked"]), _int(m["derived"])
    return _Found(
        f"max_model_len {asked:,} is longer than the model's own limit of {derived:,} tokens.",
        f"Use `--set max_model_len={derived}` or less.",
        {"max_model_len": asked, "model_max_len": derived},
    )


# --- Memory -----------------------------------------------------------------------------------


def _free_memory(m: re.Match[str], ctx: _Ctx) -> _Found:
    # gpu_worker.py (0.9 .. 0.33): "Free memory on device [cuda:0] (1.53/22.05 GiB) on startup is
    # less than desired GPU memory utilization (0.9, 19.84 GiB)."
    free, total = _num(m["free"]), _num(m["total"])
    util, desired = _num(m["util"]), _num(m["desired"])
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
        f"Only {_fmt(free)} of {_fmt(total)} GiB is free on {device}, but vLLM wants "
        f"{_fmt(desired)} GiB (gpu_memory_utilization {util:g}): other processes are using it."
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
            f"{_fmt(free)} GiB free the model cannot load."
        )
    return _Found(cause, fix, figures)


def _suggest_len(length: int) -> int:
    # Round down to a multiple of 256 tokens; msmall's profiles accept 256 and up.
    return _floor_to(length, 256) if length >= 512 else length


def _kv_too_small(m: re.Match[str], ctx: _Ctx) -> _Found:
    # kv_cache_utils.py (V1 engine, 0.8 .. 0.33): "To serve at least one request with the
    # models's max seq len (262144), (36.0 GiB KV cache is needed, which is larger than the
    # available KV cache memory (6.94 GiB). Based on the available memory, the estimated maximum
    # model length is 50512." ("models's" up to late 2025, "model's" after.)
    max_len, needed, available = _int(m["max_len"]), _num(m["needed"]), _num(m["available"])
    figures: dict[str, float | int | str] = {
        "max_model_len": max_len,
        "needed_gib": needed,
        "available_gib": available,
    }
    if m["estimate"]:
        estimate = _int(m["estimate"])
        figures["estimated_max_len"] = estimate
        suggested = estimate
        how = "the longest vLLM says fits"
    else:
        # The line was cut before vLLM's estimate: KV memory grows linearly with length.
        suggested = _suggest_len(int(max_len * available / needed)) if needed else 0
        how = "about the longest that fits"
    figures["suggested_max_len"] = suggested
    cause = (
        f"One request at max_model_len {max_len:,} needs {_fmt(needed)} GiB of KV cache, but "
        f"only {_fmt(available)} GiB is left after the weights."
    )
    if suggested >= 256:
        fix = (
            f"Use `--set max_model_len={suggested}` ({how}), or make room with "
            "`--set kv_cache_dtype=fp8`."
        )
    else:
        fix = f"Almost nothing is left for the KV cache: {_SMALLER_WEIGHTS}."
    return _Found(cause, fix, figures)


def _kv_too_small_v0(m: re.Match[str], ctx: _Ctx) -> _Found:
    # V0 engine (up to 0.7): "The model's max seq len (32768) is larger than the maximum number
    # of tokens that can be stored in KV cache (20464)."
    max_len, fits = _int(m["max_len"]), _int(m["tokens"])
    suggested = _suggest_len(fits)
    return _Found(
        f"max_model_len {max_len:,} does not fit: the KV cache holds only {fits:,} tokens.",
        f"Use `--set max_model_len={suggested}`, or make room with `--set kv_cache_dtype=fp8`.",
        {"max_model_len": max_len, "kv_cache_tokens": fits, "suggested_max_len": suggested},
        kind="kv-cache-too-small",
    )


def _weights_gib(text: str) -> float | None:
    found = _MODEL_LOADED.findall(text)
    return _gib(*found[-1]) if found else None


def _no_cache_blocks(m: re.Match[str], ctx: _Ctx) -> _Found:
    # kv_cache_utils.py / V0 block manager: "No available memory for the cache blocks. Try
    # increasing `gpu_memory_utilization` when initializing the engine."
    figures: dict[str, float | int | str] = {}
    details = []
    weights = _weights_gib(ctx.text)
    if weights is not None:
        figures["weights_gib"] = weights
        details.append(f"the weights took {_fmt(weights)} GiB")
    kv = _KV_MEMORY.findall(ctx.text)
    if kv:
        figures["available_gib"] = _num(kv[-1])
        details.append(f"{_fmt(_num(kv[-1]))} GiB was left for it")
    detail = f" ({', '.join(details)})" if details else ""
    return _Found(
        f"After loading the weights no GPU memory is left for the KV cache{detail}.",
        f"Raise `--set gpu_memory_utilization=0.95` if nothing else uses the GPU, or "
        f"{_SMALLER_WEIGHTS}.",
        figures,
    )


def _oom_figures(text: str) -> dict[str, float | int | str]:
    figures: dict[str, float | int | str] = {}
    for key, pattern in _OOM_FIGURES:
        found = pattern.search(text)
        if found:
            figures[key] = _gib(found["v"], found["u"])
    gpu = re.search(r"\bGPU (\d+)\b", text)
    if gpu:
        figures["gpu"] = int(gpu[1])
    return figures


def _oom(m: re.Match[str], ctx: _Ctx) -> _Found:
    # torch >= 2.1: "CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total capacity
    # of 93.09 GiB of which 739.81 MiB is free." Older torch: "(GPU 0; 10.73 GiB total capacity;
    # 9.85 GiB already allocated; 46.44 MiB free; ...)". vLLM >= 0.11 wraps load-time OOM in
    # "Failed to load model - not enough GPU memory. ... (original error: CUDA out of memory ...)".
    line = _line_at(ctx.text, ctx.pos)
    figures = _oom_figures(line)
    parts = []
    if "tried_gib" in figures:
        parts.append(f"allocating {_fmt(float(figures['tried_gib']))} GiB more failed")
    if "total_gib" in figures and "free_gib" in figures:
        parts.append(
            f"{_fmt(float(figures['free_gib']))} of {_fmt(float(figures['total_gib']))} GiB "
            "was free"
        )
    detail = f" ({'; '.join(parts)})" if parts else ""
    loaded = _weights_gib(ctx.before())
    load_failed = "Failed to load model" in line or "weights" in line.lower()
    if loaded is None or load_failed:
        return _Found(
            f"The GPU ran out of memory while loading the weights{detail}.",
            f"The weights do not fit: {_SMALLER_PROFILES}, or "
            "spread them over more GPUs with `--set tensor_parallel_size=2`.",
            figures,
            kind="oom-loading",
        )
    figures["weights_gib"] = loaded
    return _Found(
        f"The GPU ran out of memory after the weights ({_fmt(loaded)} GiB) were loaded, while "
        f"profiling or capturing CUDA graphs{detail}.",
        "Leave more headroom with `--set gpu_memory_utilization=0.85`, or lower "
        "`--set max_num_seqs=8`.",
        figures,
        kind="oom-after-load",
    )


# --- Ollama -----------------------------------------------------------------------------------


def _ollama_not_found(m: re.Match[str], ctx: _Ctx) -> _Found:
    figures: dict[str, float | int | str] = {}
    pulled = re.findall(r"ollama (?:pull|run) (\S+)", ctx.before())
    what = "that model tag"
    if pulled:
        figures["model"] = pulled[-1]
        what = pulled[-1]
    return _Found(
        f"The Ollama registry has no {what}: the name or tag is wrong.",
        "Use a published tag such as mistral-small3.1:24b (Q4_K_M) or "
        "mistral-small3.1:24b-instruct-2503-q8_0 (`--set ollama_tag=...`).",
        figures,
    )


def _ollama_too_old(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "This Ollama is too old for the model (HTTP 412 from the registry).",
        "Upgrade Ollama (0.6.5 or newer for Mistral Small 3.1): "
        "`curl -fsSL https://ollama.com/install.sh | sh`.",
        {},
    )


def _ollama_ram(m: re.Match[str], ctx: _Ctx) -> _Found:
    need, have = _gib(m["need"], m["nu"]), _gib(m["have"], m["hu"])
    return _Found(
        f"Ollama needs {_fmt(need)} GiB of system memory for the model but only {_fmt(have)} GiB "
        "is available.",
        "Close other programs or unload models (`ollama stop NAME`), or use the 4-bit tag "
        "with a shorter context (`--set max_model_len=8192`).",
        {"required_gib": need, "available_gib": have},
    )


def _ollama_oom(m: re.Match[str], ctx: _Ctx) -> _Found:
    figures: dict[str, float | int | str] = {}
    alloc = re.findall(r"allocating ([\d.]+) (MiB|GiB) on device (\d+)", ctx.text)
    if alloc:
        figures["tried_gib"] = _gib(alloc[-1][0], alloc[-1][1])
        figures["gpu"] = int(alloc[-1][2])
    after = "after the model loaded" if "runner started" in ctx.before() else "while loading"
    return _Found(
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


def _ollama_cpu_offload(m: re.Match[str], ctx: _Ctx) -> _Found | None:
    done, total = _offload_figures(m)
    if not total or done >= total:
        return None
    return _Found(
        f"Only {done} of {total} layers fit on the GPU; Ollama runs the other {total - done} on "
        "the CPU, which is many times slower.",
        "Shorten the context with `--set max_model_len=8192`, or use the 4-bit tag "
        "(`--profile 4090-q4`).",
        {"layers_offloaded": done, "layers_total": total},
    )


# --- Generic wrappers and runtime problems ----------------------------------------------------


def _nccl(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "NCCL, which links the GPUs under tensor parallel, failed: consumer cards without "
        "NVLink often cannot use peer-to-peer transfers.",
        "Set `--set serving.env.NCCL_P2P_DISABLE=1` (the 2x4090 profiles do), or run on one "
        "GPU with `--set tensor_parallel_size=1`.",
        {},
    )


def _last_activity(text: str, backend: str) -> str | None:
    for line in reversed(text.splitlines()):
        activity = _activity_of(line, backend)
        if activity and activity != "ready":
            return activity
    return None


def _engine_init_failed(m: re.Match[str], ctx: _Ctx) -> _Found:
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
    step = _last_activity(ctx.before(), ctx.backend)
    reached = f" (last step reached: {step})" if step else ""
    return _Found(
        f"vLLM's engine core failed during startup{reached}; the log shows no more specific cause.",
        "Read the first ERROR line above 'Engine core initialization failed' in the full log "
        "(`msmall logs`), and rerun with that cause fixed.",
        figures,
    )


def _runner_died(m: re.Match[str], ctx: _Ctx) -> _Found:
    why = m["why"].strip()
    return _Found(
        f"Ollama's llama runner exited: {why}.",
        "Shorten the context with `--set max_model_len=8192` and retry; `ollama ps` and the "
        "server log show what was loaded.",
        {"reason": why},
    )


def _tool_parser(m: re.Match[str], ctx: _Ctx) -> _Found:
    # mistral_tool_parser.py: "Error trying to handle streaming tool call." (streaming),
    # "Error in extracting tool call from response." (non-streaming).
    return _Found(
        "vLLM's Mistral tool parser could not read a tool call the model emitted after "
        "[TOOL_CALLS]; that request got plain text or an error.",
        "Keep `--tokenizer-mode mistral` with `--tool-call-parser mistral` (msmall's default for "
        "Mistral-format repos), or upgrade vLLM (`--vllm-version`), whose parser handles more.",
        {},
    )


def _tool_choice_off(m: re.Match[str], ctx: _Ctx) -> _Found:
    return _Found(
        "A client asked for tool calls but the server runs without tool parsing "
        "(--enable-auto-tool-choice and --tool-call-parser).",
        "Serve with tools on: `--set tools=true`.",
        {},
    )


_RULES: list[_Rule] = [
    # Docker: no NVIDIA runtime registered (docker run/start/compose, Engine API HTTP 500).
    _Rule(
        "no-gpu-runtime",
        re.compile(
            r'could not select device driver "(?P<driver>[^"]*)" with capabilities: \[\[gpu\]\]'
        ),
        _no_gpu_runtime,
    ),
    # nvidia-container-cli (toolkit present, driver missing) and pynvml.
    _Rule(
        "nvml-missing",
        re.compile(
            r"libnvidia-ml\.so(?:\.1)?: cannot open shared object file|NVML Shared Library Not Found"
        ),
        _nvml_missing,
    ),
    _Rule(
        "cuda-driver-too-old",
        re.compile(
            r"unsatisfied condition: cuda>=(?P<need>\d+\.\d+)(?:[^\n]*?\(cuda=(?P<have>\d+\.\d+)\))?"
        ),
        _cuda_condition,
    ),
    _Rule(
        "cuda-driver-too-old",
        re.compile(
            r"[Ee]rror (?P<code>80[34])\b[:,]? ?(?:system has unsupported display driver|"
            r"forward compatibility was attempted)|CUDA driver version is insufficient for CUDA "
            r"runtime version"
        ),
        _cuda_error_code,
    ),
    _Rule(
        "cuda-driver-too-old",
        re.compile(r"The NVIDIA driver on your system is too old \(found version (?P<found>\d+)\)"),
        _torch_driver_old,
    ),
    # uvicorn/asyncio (vLLM), docker-proxy, Go net.Listen (Ollama).
    _Rule(
        "port-in-use",
        re.compile(
            r"Bind for [\d.:\[\]]*:(?P<p1>\d+) failed: port is already allocated|"
            r"bind on address \(\S+, (?P<p2>\d+)\)[^\n]*address already in use|"
            r"listen tcp [\d.:\[\]]*:(?P<p3>\d+): bind: address already in use|"
            r"\[Errno 98\] [Aa]ddress already in use"
        ),
        _port_in_use,
    ),
    _Rule(
        "hf-gated",
        re.compile(
            r"GatedRepoError|Cannot access gated repo|Access to model \S+ is restricted|"
            r"401 Client Error[^\n]*huggingface"
        ),
        _hf_gated,
    ),
    # argparse; vLLM 0.10.x: "vllm serve: error: argument --limit-mm-per-prompt: Value image=5
    # cannot be converted to <function loads at 0x...>."
    _Rule(
        "limit-mm-format",
        re.compile(
            r"error: argument --limit[-_]mm[-_]per[-_]prompt[^:\n]*: (?:Value (?P<value>\S+) "
            r"cannot be converted|invalid \w+ value: '(?P<value2>[^']*)'|[^\n]*)"
        ),
        _limit_mm,
        VLLM_BACKENDS,
    ),
    # argparse: "vllm serve: error: unrecognized arguments: --foo"
    _Rule(
        "unknown-argument",
        re.compile(r"error: unrecognized arguments: (?P<args>[^\n]+)"),
        _unknown_argument,
        VLLM_BACKENDS,
    ),
    _Rule(
        "invalid-argument",
        re.compile(r"error: argument (?P<flag>--[\w-]+)[^:\n]*: (?P<why>[^\n]+)"),
        _invalid_argument,
        VLLM_BACKENDS,
    ),
    # vLLM < 0.8 (no Mistral3ForConditionalGeneration yet).
    _Rule(
        "vllm-too-old",
        re.compile(r"Model architectures? (?P<arch>\[[^\]\n]*\]|\S+) (?:are|is) not supported"),
        _arch_unsupported,
        VLLM_BACKENDS,
    ),
    # mistral.py: "Found 0 files matching the pattern: `...`. Make sure that a Mistral tokenizer
    # is present in [...]"
    _Rule(
        "tokenizer-format",
        re.compile(r"Make sure that a Mistral tokenizer is present in"),
        _tokenizer_format,
        VLLM_BACKENDS,
    ),
    _Rule(
        "weights-format",
        re.compile(
            r"Cannot find any model weights with|"
            r"params\.json[^\n]*(?:Entry Not Found|not found|does not exist|No such file)|"
            r"(?:Entry Not Found|does not appear to have a file named)[^\n]*params\.json"
        ),
        _weights_format,
        VLLM_BACKENDS,
    ),
    _Rule(
        "max-len-too-long",
        re.compile(
            r"User-specified max_model_len \((?P<asked>\d+)\) is greater than the derived "
            r"max_model_len \(\w+=(?P<derived>\d+)"
        ),
        _max_len_too_long,
        VLLM_BACKENDS,
    ),
    _Rule(
        "free-memory",
        re.compile(
            r"Free memory on device(?: (?P<device>[\w:]+))? \((?P<free>[\d.]+)/(?P<total>[\d.]+) "
            r"GiB\) on startup is less than desired GPU memory utilization \((?P<util>[\d.]+), "
            r"(?P<desired>[\d.]+) GiB\)"
        ),
        _free_memory,
        VLLM_BACKENDS,
    ),
    _Rule(
        "kv-cache-too-small",
        re.compile(
            r"max seq len \((?P<max_len>[\d,]+)\), \(?(?P<needed>[\d.]+) GiB KV ?cache is needed, "
            r"which is larger than the available KV cache memory \((?P<available>[\d.]+) GiB\)"
            r"(?:\. Based on the available memory, the estimated maximum model length is "
            r"(?P<estimate>[\d,]+))?"
        ),
        _kv_too_small,
        VLLM_BACKENDS,
    ),
    _Rule(
        "kv-cache-too-small",
        re.compile(
            r"max seq len \((?P<max_len>\d+)\) is larger than the maximum number of tokens that "
            r"can be stored in KV cache \((?P<tokens>\d+)\)"
        ),
        _kv_too_small_v0,
        VLLM_BACKENDS,
    ),
    _Rule(
        "no-cache-blocks",
        re.compile(r"No available memory for the cache blocks"),
        _no_cache_blocks,
        VLLM_BACKENDS,
    ),
    _Rule(
        "oom-loading",
        re.compile(
            r"Failed to load model - not enough GPU memory|CUDA out of memory|"
            r"CUDA error: out of memory|OutOfMemoryError"
        ),
        _oom,
        VLLM_BACKENDS,
    ),
    # Ollama. CLI: "Error: pull model manifest: file does not exist".
    _Rule(
        "ollama-pull-not-found",
        re.compile(
            r"pull model manifest: (?:file does not exist|[^\n]*not found)|manifest unknown"
        ),
        _ollama_not_found,
        ("ollama",),
    ),
    _Rule(
        "ollama-too-old",
        re.compile(r"requires a newer version of Ollama"),
        _ollama_too_old,
        ("ollama",),
    ),
    _Rule(
        "ollama-ram",
        re.compile(
            r"model requires more system memory \((?P<need>[\d.]+) ?(?P<nu>[KMGT]i?B)\) than is "
            r"available \((?P<have>[\d.]+) ?(?P<hu>[KMGT]i?B)\)"
        ),
        _ollama_ram,
        ("ollama",),
    ),
    # ggml-cuda.cu: "CUDA error: out of memory"; "cudaMalloc failed: out of memory".
    _Rule(
        "ollama-oom",
        re.compile(
            r"CUDA error: out of memory|cudaMalloc failed: out of memory|"
            r"(?:ROCm|HIP) error: out of memory|llama runner process has terminated:[^\n]*out of memory"
        ),
        _ollama_oom,
        ("ollama",),
    ),
    _Rule("nccl-error", re.compile(r"NCCL error|ncclUnhandledCudaError|ncclSystemError"), _nccl),
    _Rule(
        "engine-init-failed",
        re.compile(
            # Not the `raise RuntimeError("Engine core ...` source line a traceback quotes.
            r"(?<!\(\")(?:Engine core initialization failed|EngineCore failed to start|"
            r"EngineCore hit an exception)"
        ),
        _engine_init_failed,
        VLLM_BACKENDS,
    ),
    _Rule(
        "ollama-runner-died",
        re.compile(r"llama runner process has terminated: (?P<why>[^\n\"]+)"),
        _runner_died,
        ("ollama",),
    ),
    # Problems the server survives.
    _Rule(
        "tool-parser-error",
        re.compile(
            r"Error trying to handle streaming tool call|Error in extracting tool call from response"
        ),
        _tool_parser,
        VLLM_BACKENDS,
        fatal=False,
    ),
    _Rule(
        "tool-choice-disabled",
        re.compile(r"\"auto\" tool choice requires --enable-auto-tool-choice"),
        _tool_choice_off,
        VLLM_BACKENDS,
        fatal=False,
    ),
    # llama.cpp runner (Ollama < 0.6): "offloaded 30/81 layers to GPU"; Ollama's scheduler:
    # "msg=offload ... layers.model=41 layers.offload=41".
    _Rule(
        "ollama-cpu-offload",
        re.compile(
            r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU|msg=offload\b[^\n]*layers\.offload=\d+[^\n]*"
        ),
        _ollama_cpu_offload,
        ("ollama",),
        fatal=False,
    ),
]

# Figures several rules read.
_MODEL_LOADED = re.compile(
    r"(?:Model loading took|Loading model weights took|model weights took) ([\d.]+) ?(GiB|GB|MiB)"
)
_KV_MEMORY = re.compile(r"Available KV cache memory: (-?[\d.]+) GiB")
_OOM_FIGURES = (
    ("tried_gib", re.compile(r"Tried to allocate (?P<v>[\d.]+) (?P<u>[KMGT]iB)")),
    ("total_gib", re.compile(r"total capacity of (?P<v>[\d.]+) (?P<u>[KMGT]iB)")),
    ("total_gib", re.compile(r"(?P<v>[\d.]+) (?P<u>[KMGT]iB) total capacity")),
    ("free_gib", re.compile(r"of which (?P<v>[\d.]+) (?P<u>[KMGT]iB) is free")),
    ("free_gib", re.compile(r"(?P<v>[\d.]+) (?P<u>[KMGT]iB) free\b")),
)


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)]


def _evidence(text: str, pos: int) -> str:
    line = _line_at(text, pos)
    return line if len(line) <= EVIDENCE_MAX else line[: EVIDENCE_MAX - 1] + "…"


def diagnose(log_text: str, backend: str = "vllm") -> Diagnosis | None:
    """The root cause of a failed start (or a problem the server survived), None if none is known.

    Rules are tried in table order and the first that matches anywhere in the log wins, so a
    specific cause (free memory, OOM, KV cache too small) beats the generic "Engine core
    initialization failed" that vLLM prints after it.
    """
    if not log_text:
        return None
    text = "\n".join(clean_lines(log_text))
    for rule in _RULES:
        if backend not in rule.backends and backend in ALL_BACKENDS:
            continue
        for m in rule.pattern.finditer(text):
            found = rule.build(m, _Ctx(text, backend, m.start()))
            if found is None:
                continue
            return Diagnosis(
                kind=found.kind or rule.kind,
                cause=found.cause,
                fix=found.fix,
                evidence=_evidence(text, m.start()),
                figures=found.figures,
                fatal=rule.fatal,
            )
    return None


# --------------------------------------------------------------------------------------------
# What the engine is doing now
# --------------------------------------------------------------------------------------------

# One-line form (late 2025 on, 0.33): "GPU KV cache size: 39,120 tokens, Maximum concurrency for
# 32,768 tokens per request: 1.19x". Up to 0.12 the two halves are separate lines, so each half
# has its own pattern. DeepSeek sparse attention says "Maximum DSA sparse concurrency".
_KV_TOKENS = re.compile(r"GPU KV cache size: (?P<tokens>[\d,]+) tokens")
_KV_CONCURRENCY = re.compile(
    r"Maximum (?:[\w ]+ )?concurrency for (?P<len>[\d,]+) tokens per request: (?P<x>[\d.]+)x"
)


def _kv_activity(m: re.Match[str]) -> str:
    line = m.string
    tokens = _int(m["tokens"])
    conc = _KV_CONCURRENCY.search(line)
    if conc:
        return f"KV cache: {tokens:,} tokens ({_num(conc['x']):.2f}x concurrency at {conc['len']})"
    return f"KV cache: {tokens:,} tokens"


def _weights_loaded(m: re.Match[str]) -> str:
    return f"weights loaded: {_gib(m[1], m[2]):.2f} GiB"


_Activity = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

_VLLM_ACTIVITY: list[_Activity] = [
    (re.compile(r"Application startup complete"), lambda m: "ready"),
    (
        re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on (\S+)"),
        lambda m: f"API server starting on {m[1]}",
    ),
    (re.compile(r"Uvicorn running on (\S+)"), lambda m: f"API server listening on {m[1]}"),
    (_KV_TOKENS, _kv_activity),
    (
        _KV_CONCURRENCY,
        lambda m: f"max concurrency {_num(m['x']):.2f}x at {m['len']} tokens per request",
    ),
    (_KV_MEMORY, lambda m: f"KV cache memory: {_num(m[1]):.2f} GiB"),
    (_MODEL_LOADED, _weights_loaded),
    (
        re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)"),
        lambda m: f"loading weights: {m[2]}/{m[3]} shards",
    ),
    (
        re.compile(r"Loading weights took ([\d.]+) s"),
        lambda m: f"weights read in {_num(m[1]):.0f} s",
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
        lambda m: f"torch.compile done in {_num(m[1]):.0f} s",
    ),
    (
        re.compile(r"Dynamo bytecode transform|Compiling a graph|Directly load the compiled graph"),
        lambda m: "compiling the model (torch.compile)",
    ),
    (
        re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
        lambda m: f"engine initialised in {_num(m[1]):.0f} s",
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
            f"generating {_num(m[1]):.1f} tokens/s, {m[2]} running, {m[3]} waiting, "
            f"KV cache {m[4]}% used"
        ),
    ),
]

_OLLAMA_ACTIVITY: list[_Activity] = [
    (
        re.compile(r"llama runner started in ([\d.]+) seconds"),
        lambda m: f"runner started in {_num(m[1]):.1f} s",
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
        lambda m: f"loading model: {round(_num(m[1]) * 100)}%",
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
]


def _activity_of(clean: str, backend: str) -> str | None:
    if backend == "ollama":
        tables = [_OLLAMA_ACTIVITY]
    elif backend in VLLM_BACKENDS:
        tables = [_VLLM_ACTIVITY]
    else:
        tables = [_VLLM_ACTIVITY, _OLLAMA_ACTIVITY]
    for table in tables:
        for pattern, render in table:
            m = pattern.search(clean)
            if m:
                return render(m)
    return None


def engine_activity(line: str, backend: str = "vllm") -> str | None:
    """A short status for one log line worth showing while waiting, None for noise."""
    clean = _clean_one(line)
    if not clean:
        return None
    return _activity_of(clean, backend)


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
        "tokens": _int(tokens[-1]),
        "concurrency": _num(conc[-1]["x"]) if conc else None,
        "max_len": _int(conc[-1]["len"]) if conc else None,
        "available_gib": _num(memory[-1]) if memory else None,
    }


_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_LOGFMT_OFFLOAD = re.compile(r"msg=offload\b[^\n]*")


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
