"""Engine logs -> plain-language cause and fix, and what the engine is doing right now.

The machinery and the rules every engine shares (the NVIDIA stack, Docker, ports, gated repos);
each engine's own rules live with it (backends/<engine>/logs.py) and reach here as `LogRules`.

- ``diagnose(log_text, rules)`` reads a whole log (or its tail) after an engine died or a
  container failed to start, and names the root cause with the figures from the log and one
  concrete msmall action.
- ``engine_activity(line, rules)`` turns one log line into a short status worth showing while
  the user waits (loading weights, KV cache size, capturing CUDA graphs, ready), None for noise.

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

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

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


def clean_one(line: str) -> str:
    lines = [part for part in _physical_lines(line) if part]
    return _strip_prefixes(lines[-1])[0].strip() if lines else ""


def num(text: str) -> float:
    return float(text.replace(",", ""))


def to_int(text: str) -> int:
    return int(text.replace(",", ""))


def to_gib(value: str, unit: str) -> float:
    """'739.81', 'MiB' -> 0.72 (GiB, two decimals)."""
    scale = {
        "b": 1 / 1024**3,
        "bytes": 1 / 1024**3,
        "kib": 1 / 1024**2,
        "mib": 1 / 1024,
        "gib": 1.0,
        "tib": 1024.0,
    }
    return round(num(value) * scale.get(unit.lower(), 1.0), 2)


def fmt(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def floor_to(value: float, step: int) -> int:
    return int(value // step * step)


@dataclass
class Ctx:
    text: str  # all logical lines joined with \n
    pos: int  # where the match starts in text
    # "container" when the engine ran in Docker (the fix for an old driver differs).
    runtime: str = "process"
    activity: tuple[Activity, ...] = ()

    def before(self) -> str:
        return self.text[: self.pos]


class Found(NamedTuple):
    cause: str
    fix: str
    figures: dict[str, float | int | str]
    kind: str | None = None  # overrides the rule's kind (e.g. OOM before vs after loading)


# A builder gets the match and its context; None means "looked like it, but is not a problem".
Builder = Callable[[re.Match[str], Ctx], "Found | None"]


class Rule(NamedTuple):
    kind: str
    pattern: re.Pattern[str]
    build: Builder
    fatal: bool = True


# A log line pattern and how to say what it means while the user waits.
Activity = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


@dataclass(frozen=True)
class LogRules:
    """What one engine's logs can tell: causes of failure (in priority order) and activity."""

    diagnosis: tuple[Rule, ...] = ()
    activity: tuple[Activity, ...] = ()


def _no_gpu_runtime(m: re.Match[str], ctx: Ctx) -> Found:
    driver = m["driver"]
    named = f' "{driver}"' if driver else ""
    return Found(
        f"Docker could not hand the GPU to the container: it has no{named} device driver for "
        "--gpus (the NVIDIA Container Toolkit is missing or not configured).",
        "Install the NVIDIA Container Toolkit, then run `sudo nvidia-ctk runtime configure "
        "--runtime=docker` and `sudo systemctl restart docker`.",
        {"driver": driver},
    )


def _nvml_missing(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "The NVIDIA driver library (libnvidia-ml.so.1) was not found, so no GPU can be used: "
        "the host has no NVIDIA driver, or the container runtime cannot see it.",
        "Install the NVIDIA driver on the host and check that `nvidia-smi` works, then retry.",
        {"library": "libnvidia-ml.so.1"},
    )


def _driver_fix(ctx: Ctx) -> str:
    if ctx.runtime == "container":
        return (
            "Use a `-cu129` image tag (e.g. vllm/vllm-openai:v0.33.0-cu129) for drivers older "
            "than R580, or update the NVIDIA driver to R580 or newer."
        )
    return (
        "Update the NVIDIA driver (R580+ for CUDA 13 builds), or install a vLLM build for the "
        "CUDA your driver supports (`nvidia-smi` shows it)."
    )


def _cuda_condition(m: re.Match[str], ctx: Ctx) -> Found:
    # nvidia-container-cli: "requirement error: unsatisfied condition: cuda>=12.9"
    figures: dict[str, float | int | str] = {"required_cuda": m["need"]}
    have = f" (it supports CUDA {m['have']})" if m["have"] else ""
    if m["have"]:
        figures["driver_cuda"] = m["have"]
    return Found(
        f"The image needs CUDA {m['need']} or newer, which the host NVIDIA driver does not "
        f"support{have}.",
        _driver_fix(ctx),
        figures,
    )


def _cuda_error_code(m: re.Match[str], ctx: Ctx) -> Found:
    # CUDA error 803 (cudaErrorSystemDriverMismatch), 804 (cudaErrorCompatNotSupportedOnDevice),
    # 35 (cudaErrorInsufficientDriver): the runtime in the image is newer than the host driver.
    code = m["code"] or "35"
    return Found(
        f"CUDA error {code}: the CUDA runtime that vLLM was built with is newer than the host "
        "NVIDIA driver supports.",
        _driver_fix(ctx),
        {"cuda_error": int(code)},
    )


def _torch_driver_old(m: re.Match[str], ctx: Ctx) -> Found:
    # torch: "The NVIDIA driver on your system is too old (found version 11040)."
    found = int(m["found"])
    cuda = f"{found // 1000}.{found % 1000 // 10}"
    return Found(
        f"PyTorch says the NVIDIA driver is too old: it supports CUDA {cuda}, less than this "
        "vLLM build needs.",
        _driver_fix(ctx),
        {"driver_cuda": cuda},
    )


def _port_in_use(m: re.Match[str], ctx: Ctx) -> Found:
    port = next((m[g] for g in ("p1", "p2", "p3") if m[g]), None)
    figures: dict[str, float | int | str] = {}
    where = "the port"
    fix = "Stop whatever holds the port, or pick another with `--port N`."
    if port:
        figures["port"] = int(port)
        where = f"port {port}"
        fix = f"Stop whatever listens on {where} (`ss -ltnp`), or use `--port {int(port) + 1}`."
    return Found(f"The server could not listen: {where} is already in use.", fix, figures)


def _hf_gated(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "Hugging Face refused the download: the model repo is gated and no valid token "
        "that accepted its licence was sent.",
        "Accept the licence on the model's Hugging Face page, then export HF_TOKEN with a token "
        "from that account and retry.",
        {},
    )


def _nccl(m: re.Match[str], ctx: Ctx) -> Found:
    return Found(
        "NCCL, which links the GPUs under tensor parallel, failed: consumer cards without "
        "NVLink often cannot use peer-to-peer transfers.",
        "Set `--set serving.env.NCCL_P2P_DISABLE=1` (the 2x4090 profiles do), or run on one "
        "GPU with `--set tensor_parallel_size=1`.",
        {},
    )


def line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)]


def _evidence(text: str, pos: int) -> str:
    line = line_at(text, pos)
    return line if len(line) <= EVIDENCE_MAX else line[: EVIDENCE_MAX - 1] + "…"


COMMON_RULES: tuple[Rule, ...] = (
    Rule(
        "no-gpu-runtime",
        re.compile(
            r'could not select device driver "(?P<driver>[^"]*)" with capabilities: \[\[gpu\]\]'
        ),
        _no_gpu_runtime,
    ),
    Rule(
        "nvml-missing",
        re.compile(
            r"libnvidia-ml\.so(?:\.1)?: cannot open shared object file|NVML Shared Library Not Found"
        ),
        _nvml_missing,
    ),
    Rule(
        "cuda-driver-too-old",
        re.compile(
            r"unsatisfied condition: cuda>=(?P<need>\d+\.\d+)(?:[^\n]*?\(cuda=(?P<have>\d+\.\d+)\))?"
        ),
        _cuda_condition,
    ),
    Rule(
        "cuda-driver-too-old",
        re.compile(
            r"[Ee]rror (?P<code>80[34])\b[:,]? ?(?:system has unsupported display driver|"
            r"forward compatibility was attempted)|CUDA driver version is insufficient for CUDA "
            r"runtime version"
        ),
        _cuda_error_code,
    ),
    Rule(
        "cuda-driver-too-old",
        re.compile(r"The NVIDIA driver on your system is too old \(found version (?P<found>\d+)\)"),
        _torch_driver_old,
    ),
    Rule(
        "port-in-use",
        re.compile(
            r"Bind for [\d.:\[\]]*:(?P<p1>\d+) failed: port is already allocated|"
            r"bind on address \(\S+, (?P<p2>\d+)\)[^\n]*address already in use|"
            r"listen tcp [\d.:\[\]]*:(?P<p3>\d+): bind: address already in use|"
            r"\[Errno 98\] [Aa]ddress already in use"
        ),
        _port_in_use,
    ),
    Rule(
        "hf-gated",
        re.compile(
            r"GatedRepoError|Cannot access gated repo|Access to model \S+ is restricted|"
            r"401 Client Error[^\n]*huggingface"
        ),
        _hf_gated,
    ),
)

# NCCL fails under tensor parallel; below the memory rules, which name a more specific cause.
NCCL_RULE = Rule(
    "nccl-error", re.compile(r"NCCL error|ncclUnhandledCudaError|ncclSystemError"), _nccl
)


def diagnose(log_text: str, rules: LogRules, runtime: str = "process") -> Diagnosis | None:
    """The root cause of a failed start (or a problem the server survived), None if none is known.

    Rules are tried in order and the first that matches anywhere in the log wins, so a specific
    cause (free memory, OOM, KV cache too small) beats the generic "Engine core initialization
    failed" that vLLM prints after it.
    """
    if not log_text:
        return None
    text = "\n".join(clean_lines(log_text))
    for rule in rules.diagnosis:
        for m in rule.pattern.finditer(text):
            found = rule.build(m, Ctx(text, m.start(), runtime, rules.activity))
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


def activity_of(clean: str, activity: tuple[Activity, ...]) -> str | None:
    for pattern, render in activity:
        m = pattern.search(clean)
        if m:
            return render(m)
    return None


def engine_activity(line: str, rules: LogRules) -> str | None:
    """A short status for one log line worth showing while waiting, None for noise."""
    clean = clean_one(line)
    if not clean:
        return None
    return activity_of(clean, rules.activity)


def last_activity(text: str, activity: tuple[Activity, ...]) -> str | None:
    """The last step an engine reached before it failed, from its activity lines."""
    for line in reversed(text.splitlines()):
        step = activity_of(line, activity)
        if step and step != "ready":
            return step
    return None
