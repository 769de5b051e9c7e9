"""What one simulated engine is: its flavor, address, model, timings and injected failures.

This module only uses the standard library, so ``python -m msmall.simulator --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from msmall.models import MISTRAL_SMALL_3_1 as m

Flavor = Literal["vllm", "ollama"]
FLAVORS: tuple[str, ...] = ("vllm", "ollama")

VLLM_VERSION = "0.33.0"
OLLAMA_VERSION = "0.33.0"

DEFAULT_PORTS = {"vllm": 8000, "ollama": 11434}
DEFAULT_SERVED_NAMES = {"vllm": "mistral-small-3.1", "ollama": m.default_ollama_tag}

# vLLM with no --max-model-len uses the model's full context (131072); the simulator defaults to
# the 32k most profiles set, because it stands in for a server msmall launched.
DEFAULT_VLLM_MAX_MODEL_LEN = 32768
# Ollama's default context on a 24 GB card (OLLAMA_CONTEXT_LENGTH overrides it).
DEFAULT_OLLAMA_CONTEXT = 4096
# The KV cache of a 24 GB card serving the 4-bit model at 0.92 utilisation: 39,120 tokens.
DEFAULT_KV_CACHE_TOKENS = 39120

# Failure injection. Each mode mimics one real way an engine fails; see FAIL_MODES' values.
FAIL_MODES: dict[str, str] = {
    "oom-on-load": "vllm: CUDA out of memory while loading the weights, exit 1 before listening",
    "low-free-memory": "vllm: 'Free memory on device ... is less than desired GPU memory "
    "utilization' at startup, exit 1 before listening",
    "kv-too-small": "vllm: max seq len needs more KV cache than available, exit 1",
    "http-503": "health and chat answer 503 after startup (engine dead / server busy)",
    "tools-as-text": "tool calls come back as '[TOOL_CALLS][...]' text, no tool_calls "
    "(vLLM without --tool-call-parser, Mistral tokenizer); 'tools-as-text:0.3' does it to 30% "
    "of tool-call requests",
    "tool-choice-400": 'vllm: tools with tool_choice auto get 400 \'"auto" tool choice requires '
    "--enable-auto-tool-choice ...' (HF tokenizer without the tool flags)",
    "no-vision": "images are rejected (same as --no-vision)",
    "pull-error": "ollama: /api/pull answers 200 then an error line",
    "cpu-offload": "ollama: /api/ps shows size_vram < size (part of the model on CPU)",
    "no-tools": "ollama: /api/show capabilities without 'tools'; requests with tools get 400",
    "exit-after-ready": "exit 1 shortly after becoming ready",
}


# Fail modes that take a fraction of requests: "MODE:RATE", 0 < RATE <= 1 (plain MODE is 1.0).
FRACTIONAL_FAIL_MODES = frozenset({"tools-as-text"})

# vLLM's default --max-num-seqs (vllm/engine/arg_utils.py
# EngineArgs.get_batch_defaults: 256 on a GPU under 70 GiB or an A100, 1024 above); Ollama's
# OLLAMA_NUM_PARALLEL default
# (envconfig/config.go: NumParallel = Uint("OLLAMA_NUM_PARALLEL", 1)).
DEFAULT_MAX_NUM_SEQS = {"vllm": 256, "ollama": 1}


def split_fail_mode(entry: str) -> tuple[str, float]:
    """``"tools-as-text:0.3"`` -> ("tools-as-text", 0.3); ``"http-503"`` -> ("http-503", 1.0)."""
    mode, sep, rate_text = entry.partition(":")
    if not sep:
        return mode, 1.0
    if mode not in FRACTIONAL_FAIL_MODES:
        raise ConfigError(
            f"fail mode {mode!r} takes no rate (only {', '.join(sorted(FRACTIONAL_FAIL_MODES))})"
        )
    try:
        rate = float(rate_text)
    except ValueError:
        raise ConfigError(f"fail mode {entry!r}: the rate must be a number in (0, 1]") from None
    if not 0 < rate <= 1:
        raise ConfigError(f"fail mode {entry!r}: the rate must be a number in (0, 1]")
    return mode, rate


class ConfigError(ValueError):
    """A simulator setting that makes no sense (unknown fail mode, bad OLLAMA_HOST)."""


@dataclass(frozen=True)
class SimulatorConfig:
    flavor: Flavor = "vllm"
    host: str = "127.0.0.1"
    # None: the flavor's default port (8000 / 11434). 0 lets the OS pick one.
    port: int | None = None
    # None: the flavor's default (vLLM served name / Ollama model tag).
    served_model_name: str | None = None
    # More names the vLLM flavor answers to (vLLM's --served-model-name takes several).
    extra_model_names: tuple[str, ...] = ()
    # The model vLLM was asked to load (repo or path); only shown in the logs.
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    vision: bool = True
    # None: no limit beyond vision on/off (vLLM's --limit-mm-per-prompt image count).
    max_images_per_prompt: int | None = None
    # None: 32768 for vLLM; OLLAMA_CONTEXT_LENGTH or 4096 for Ollama.
    max_model_len: int | None = None
    # None: large enough for max_model_len. Smaller than max_model_len fails like vLLM does.
    kv_cache_tokens: int | None = None
    startup_delay: float = 0.0
    ttft: float = 0.0
    tpot: float = 0.0
    fail: frozenset[str] = frozenset()
    # Ollama: bytes of the model layer a pull reports (the real q4 file is about 15 GB).
    pull_total_bytes: int = 15_000_000_000
    pull_duration: float = 0.2
    # Ollama: start with the served tag already pulled.
    pulled: bool = False
    # Ollama: where pulled manifests persist between runs (like OLLAMA_MODELS); None: memory only.
    models_dir: str | None = None
    # Seconds between "ready" and the exit of exit-after-ready.
    exit_after_ready_s: float = 0.5
    quiet: bool = False
    # vLLM --disable-uvicorn-access-log: no access line per request (the other log lines stay).
    access_log: bool = True
    # vLLM --enable-request-id-headers: answer with an X-Request-Id header.
    request_id_headers: bool = False
    # Load model (engine.py): None: 256 for vLLM, 1 for Ollama.
    max_num_seqs: int | None = None
    # Above this many running sequences the time per output token grows by ``batch_slope``
    # times tpot per ``batch_knee`` more sequences (engine.EngineModel.tpot_now).
    batch_knee: int = 64
    batch_slope: float = 1.0

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ConfigError(f"unknown flavor {self.flavor!r} (choose from {', '.join(FLAVORS)})")
        unknown = sorted({split_fail_mode(entry)[0] for entry in self.fail} - set(FAIL_MODES))
        if unknown:
            raise ConfigError(
                f"unknown fail mode(s): {', '.join(unknown)} (choose from {', '.join(FAIL_MODES)})"
            )
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError("max_num_seqs must be >= 1")
        if self.batch_knee < 1:
            raise ConfigError("batch_knee must be >= 1")
        for name in ("startup_delay", "ttft", "tpot", "pull_duration", "batch_slope"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")

    # Resolved values -----------------------------------------------------------------------

    @property
    def bind_port(self) -> int:
        return DEFAULT_PORTS[self.flavor] if self.port is None else self.port

    @property
    def model_name(self) -> str:
        return self.served_model_name or DEFAULT_SERVED_NAMES[self.flavor]

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.extra_model_names)

    @property
    def context_length(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        if self.flavor == "vllm":
            return DEFAULT_VLLM_MAX_MODEL_LEN
        env = os.environ.get("OLLAMA_CONTEXT_LENGTH", "")
        return int(env) if env.isdigit() and int(env) > 0 else DEFAULT_OLLAMA_CONTEXT

    @property
    def kv_tokens(self) -> int:
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        # Never the bottleneck unless asked: the 24 GB card's ratio (39,120 for 32,768) or more.
        scaled = self.context_length * DEFAULT_KV_CACHE_TOKENS // DEFAULT_VLLM_MAX_MODEL_LEN
        return max(DEFAULT_KV_CACHE_TOKENS, scaled)

    @property
    def vision_enabled(self) -> bool:
        return self.vision and "no-vision" not in self.fail and self.max_images_per_prompt != 0

    @property
    def image_limit(self) -> int | None:
        """Images allowed per request: 0 without vision, None for no limit."""
        if not self.vision_enabled:
            return 0
        return self.max_images_per_prompt

    @property
    def num_seqs(self) -> int:
        if self.max_num_seqs:
            return self.max_num_seqs
        if self.flavor == "ollama":
            env = os.environ.get("OLLAMA_NUM_PARALLEL", "")
            if env.isdigit() and int(env) > 0:
                return int(env)
        return DEFAULT_MAX_NUM_SEQS[self.flavor]

    def failing(self, mode: str) -> bool:
        """Whether the mode is on at all (for a fractional mode: for some requests)."""
        return self.fail_rate(mode) > 0

    def fail_rate(self, mode: str) -> float:
        """The fraction of requests a mode applies to: 0 (off) to 1 (every request)."""
        for entry in self.fail:
            name, rate = split_fail_mode(entry)
            if name == mode:
                return rate
        return 0.0

    def replace(self, **changes: object) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)


def parse_ollama_host(value: str) -> tuple[str, int]:
    """OLLAMA_HOST as ``ollama serve`` reads it: host, host:port, :port, with or without scheme."""
    text = value.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, port = text, DEFAULT_PORTS["ollama"]
    if text.startswith("["):  # [::1]:11434
        closing = text.find("]")
        host = text[1:closing]
        rest = text[closing + 1 :]
        if rest.startswith(":"):
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, value)
    return host or "127.0.0.1", port


def _port(text: str, original: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"OLLAMA_HOST={original!r}: bad port {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m msmall.simulator",
        description="An HTTP server that behaves like vLLM 0.33 or Ollama 0.33 serving "
        "Mistral Small 3.1: same endpoints, shapes, log lines and failure modes; no GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fail modes:\n" + "\n".join(f"  {k:18} {v}" for k, v in FAIL_MODES.items()),
    )
    parser.add_argument("--flavor", choices=FLAVORS, default="vllm")
    parser.add_argument("--host", default=None, help="default 127.0.0.1 (ollama: OLLAMA_HOST)")
    parser.add_argument(
        "--port", type=int, default=None, help="default 8000 (vllm) / 11434 (ollama: OLLAMA_HOST)"
    )
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"vllm default {DEFAULT_SERVED_NAMES['vllm']}; ollama default tag "
        f"{DEFAULT_SERVED_NAMES['ollama']}",
    )
    parser.add_argument("--model", default=None, help="model repo shown in the vLLM logs")
    parser.add_argument(
        "--api-key", default=None, help="vllm: guard /v1/* with this key (also VLLM_API_KEY)"
    )
    parser.add_argument("--no-vision", action="store_true", help="reject image inputs")
    parser.add_argument("--max-images-per-prompt", type=int, default=None, metavar="N")
    parser.add_argument("--max-model-len", type=int, default=None, metavar="N")
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=None,
        metavar="N",
        help="KV cache size in tokens, paged in 16-token blocks; vLLM preempts when it runs out",
    )
    parser.add_argument("--startup-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--ttft", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--tpot", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        type=_fail_arg,
        metavar="MODE[:RATE]",
        help="inject a failure (see below); tools-as-text takes a rate, e.g. tools-as-text:0.3",
    )
    parser.add_argument(
        "--enable-request-id-headers",
        action="store_true",
        help="vllm: add X-Request-Id to every response (the request's, or a new one)",
    )
    parser.add_argument(
        "--disable-uvicorn-access-log",
        action="store_true",
        help="vllm: no access log line per request (load tests: a line per request costs CPU)",
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, metavar="N", help="default 256 (ollama: 1)"
    )
    parser.add_argument(
        "--batch-knee",
        type=int,
        default=64,
        metavar="N",
        help="running sequences above which the time per token grows (default 64)",
    )
    parser.add_argument(
        "--batch-slope",
        type=float,
        default=1.0,
        metavar="X",
        help="extra tpot per knee-sized step above the knee (default 1.0; 0: flat)",
    )
    parser.add_argument("--pull-total-bytes", type=int, default=15_000_000_000, metavar="N")
    parser.add_argument("--pulled", action="store_true", help="ollama: the model is already pulled")
    parser.add_argument("--models-dir", default=None, help="ollama: persist pulls here")
    parser.add_argument("--quiet", action="store_true", help="no engine log lines")
    return parser


def _fail_arg(value: str) -> str:
    try:
        mode, _ = split_fail_mode(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if mode not in FAIL_MODES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(sorted(FAIL_MODES))})"
        )
    return value


def config_from_args(argv: Sequence[str] | None = None) -> SimulatorConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    host, port = args.host, args.port
    if args.flavor == "ollama" and (host is None or port is None) and os.environ.get("OLLAMA_HOST"):
        try:
            env_host, env_port = parse_ollama_host(os.environ["OLLAMA_HOST"])
        except ConfigError as exc:
            parser.error(str(exc))
        host = env_host if host is None else host
        port = env_port if port is None else port
    names = args.served_model_name or []
    try:
        return SimulatorConfig(
            flavor=args.flavor,
            host=host or "127.0.0.1",
            port=port,
            served_model_name=names[0] if names else None,
            extra_model_names=tuple(names[1:]),
            model=args.model,
            # Only vLLM has keys; Ollama has no authentication at all.
            api_key=(args.api_key or os.environ.get("VLLM_API_KEY") or None)
            if args.flavor == "vllm"
            else None,
            vision=not args.no_vision,
            max_images_per_prompt=args.max_images_per_prompt,
            max_model_len=args.max_model_len,
            kv_cache_tokens=args.kv_cache_tokens,
            startup_delay=args.startup_delay,
            ttft=args.ttft,
            tpot=args.tpot,
            fail=frozenset(args.fail),
            pull_total_bytes=args.pull_total_bytes,
            pulled=args.pulled,
            models_dir=args.models_dir,
            quiet=args.quiet,
            max_num_seqs=args.max_num_seqs,
            request_id_headers=args.enable_request_id_headers,
            access_log=not args.disable_uvicorn_access_log,
            batch_knee=args.batch_knee,
            batch_slope=args.batch_slope,
        )
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
