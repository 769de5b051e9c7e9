"""A stand-in for the ``vllm`` CLI, for tests: vLLM's argv checks, then the msmall simulator.

- ``vllm --version`` prints ``FAKE_VLLM_VERSION`` (default 0.33.0).
- ``vllm serve MODEL [flags]`` parses flags like vLLM's parser (prog ``vllm serve``; unknown
  flags exit 2 with argparse's ``unrecognized arguments``), applies vLLM's post-parse checks,
  then runs the simulator (vllm flavor) in this process.

What depends on the version (FAKE_VLLM_VERSION):
- ``--limit-mm-per-prompt``: from 0.10 the value is JSON (``'{"image":10}'``, or the dotted
  ``--limit-mm-per-prompt.image 10``); ``image=5`` fails exactly like
  shared/data/samples/vllm/limit-mm-per-prompt-argparse-error.log. Before 0.10, ``image=5`` works.
- ``--mm-processor-cache-gb`` and ``--enable-log-requests`` exist from 0.10;
  ``--disable-mm-preprocessor-cache`` is gone from 0.13 (approximate: FACTS.md only says it is
  gone in 0.33); ``--language-model-only`` exists from 0.12 (approximate).
- With tokenizer mode ``auto``, 0.12+ picks the Mistral tokenizer for repos that ship
  ``tekken.json`` (mistralai/*), not for HF-only quantized repos.

Deliberate difference: with no model at all, real vLLM silently serves Qwen/Qwen3-0.6B; the
fake fails loudly (exit 2) so a launcher that forgets the model shows up in tests.

Tool behaviour follows vLLM's serving code: with ``--enable-auto-tool-choice`` and
``--tool-call-parser`` tool calls are parsed; without them, a Mistral tokenizer returns the
raw ``[TOOL_CALLS][...]`` text, an HF tokenizer answers 400 to ``tool_choice: auto``.

FAKE_VLLM_PARSE_ONLY=1: parse and check the argv, print the parsed flags as JSON, exit 0.

Simulator knobs from the environment: FAKE_VLLM_FAIL (comma-separated simulator --fail modes),
FAKE_VLLM_STARTUP_DELAY, FAKE_VLLM_TTFT, FAKE_VLLM_TPOT (seconds), FAKE_VLLM_KV_CACHE_TOKENS
(a KV cache smaller than --max-model-len fails at startup like vLLM).

FAKE_VLLM_LEAK_SECRETS=1 makes the fake print every secret it was given into its log the way a
real engine can: vLLM logs ``non-default args: {...}`` with ``api_key`` and ``hf_token`` in clear
(vllm/entrypoints/utils.py ``log_non_default_args``); the environment dump and the final error
line quoting the token are deliberate, for redaction tests. ``=die`` then exits 1 like a failed
engine start (``Engine core initialization failed``) instead of serving.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import sys
from pathlib import Path

VERSION = os.environ.get("FAKE_VLLM_VERSION", "0.33.0")
SECRET_ENV_NAMES = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "MSMALL_API_KEY", "OPENAI_API_KEY",
)  # fmt: skip

TOOL_PARSERS = (
    "deepseek_v3",
    "granite",
    "hermes",
    "internlm",
    "jamba",
    "llama3_json",
    "llama4_json",
    "llama4_pythonic",
    "mistral",
    "openai",
    "phi4_mini_json",
    "pythonic",
    "qwen3_coder",
    "qwen3_xml",
    "xlam",
)
# Owners whose repos ship HF shards only (no consolidated.safetensors / params.json / tekken.json).
HF_ONLY_OWNERS = ("redhatai", "neuralmagic", "nm-testing")


def version_tuple(text: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(n) for n in numbers) or (0,)


V = version_tuple(VERSION)


def log(message: str, source: str = "__init__.py:241", level: str = "INFO") -> None:
    stamp = dt.datetime.now().strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [{source}] {message}", flush=True)


# Argument types, named like vLLM's so argparse's messages read the same ------------------------


def parse_type(return_type):
    def _parse_type(val: str):
        try:
            return return_type(val)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"Value {val} cannot be converted to {return_type}."
            ) from e

    return _parse_type


def human_readable_int_or_auto(value: str) -> int:
    """vLLM's --max-model-len: 32k = 32000, 32K = 32768, auto / -1 = largest that fits (-1)."""
    value = value.strip()
    if value.lower() in ("auto", "-1"):
        return -1
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", value)
    if not match:
        raise ValueError(f"Invalid format: {value}")
    number, suffix = match.groups()
    decimal = {"k": 10**3, "m": 10**6, "g": 10**9}
    binary = {"K": 2**10, "M": 2**20, "G": 2**30}
    if not suffix:
        return int(number)
    if suffix in binary:
        if "." in number:
            raise ValueError(f"Decimals are not allowed with binary suffixes like {suffix}.")
        return int(number) * binary[suffix]
    return int(float(number) * decimal[suffix])


def legacy_mm_limit(value: str) -> dict:
    """Before 0.10: ``image=5,video=1`` (deprecated) or JSON."""
    value = value.strip()
    if value.startswith("{"):
        return json.loads(value)
    limits = {}
    for item in value.split(","):
        key, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(value)
        limits[key.strip()] = int(count)
    return limits


# The parser --------------------------------------------------------------------------------------


def build_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        usage="vllm serve [model_tag] [options]",
        help="Start the vLLM OpenAI Compatible API server.",
        allow_abbrev=False,
    )
    p.add_argument("model_tag", nargs="?", default=None)
    add = p.add_argument
    add("--model", default=None)
    add("--tokenizer", default=None)
    add("--tokenizer-mode", choices=["auto", "hf", "slow", "mistral", "custom"], default="auto")
    add("--config-format", choices=["auto", "hf", "mistral"], default="auto")
    add("--load-format", default="auto")
    add(
        "--dtype",
        choices=["auto", "half", "float16", "bfloat16", "float", "float32"],
        default="auto",
    )
    add("--quantization", "-q", default=None)
    add("--revision", default=None)
    add("--download-dir", default=None)
    add("--trust-remote-code", action="store_true")
    add("--seed", type=int, default=None)
    add("--max-model-len", type=parse_type(human_readable_int_or_auto), default=None)
    add("--gpu-memory-utilization", type=float, default=0.92)
    add("--tensor-parallel-size", "-tp", type=int, default=1)
    add("--pipeline-parallel-size", "-pp", type=int, default=1)
    add("--data-parallel-size", "-dp", type=int, default=1)
    # The data-parallel group of vLLM 0.33's EngineArgs.add_cli_args (vllm/engine/arg_utils.py)
    # and --headless / --api-server-count (vllm/entrypoints/common/cli_args.py).
    add("--data-parallel-rank", "-dpn", type=int, default=None)
    add("--data-parallel-start-rank", "-dpr", type=int, default=None)
    add("--data-parallel-size-local", "-dpl", type=int, default=None)
    add("--data-parallel-address", "-dpa", type=str, default=None)
    add("--data-parallel-rpc-port", "-dpp", type=int, default=None)
    add("--data-parallel-backend", "-dpb", type=str, default="mp")
    add("--data-parallel-hybrid-lb", "-dph", action=argparse.BooleanOptionalAction, default=False)
    add("--data-parallel-external-lb", "-dpe", action=argparse.BooleanOptionalAction, default=False)
    add("--headless", action="store_true", default=False)
    add("--api-server-count", "-asc", type=int, default=None)
    add("--nnodes", "-n", type=int, default=1)
    add("--node-rank", "-r", type=int, default=0)
    add(
        "--distributed-executor-backend",
        choices=["ray", "mp", "uni", "external_launcher"],
        default=None,
    )
    add(
        "--kv-cache-dtype",
        choices=["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc"],
        default="auto",
    )
    add("--max-num-seqs", type=int, default=None)
    add("--max-num-batched-tokens", type=int, default=None)
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    add("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None)
    add("--enforce-eager", action="store_true")
    add("--cpu-offload-gb", type=float, default=0)
    add("--swap-space", type=float, default=4)
    if V >= (0, 10):
        add("--limit-mm-per-prompt", type=parse_type(json.loads), default=None)
        add("--mm-processor-cache-gb", type=float, default=4)
        add("--enable-log-requests", action="store_true")
    else:
        add("--limit-mm-per-prompt", type=parse_type(legacy_mm_limit), default=None)
    if V < (0, 13):
        add("--disable-mm-preprocessor-cache", action="store_true")
    if V >= (0, 12):
        add("--language-model-only", action="store_true")
    add("--disable-log-requests", action="store_true")
    add("--disable-log-stats", action="store_true")
    add("--max-log-len", type=int, default=None)
    add("--tool-call-parser", default=None)
    add("--enable-auto-tool-choice", action="store_true")
    add("--reasoning-parser", default=None)
    add("--chat-template", default=None)
    add("--chat-template-content-format", default="auto")
    add("--generation-config", default="auto")
    add("--served-model-name", nargs="+", default=None)
    add("--host", default=None)
    add("--port", type=int, default=8000)
    add("--api-key", default=None)
    add("--uvicorn-log-level", default="info")
    add("--root-path", default=None)
    add("--hf-token", nargs="?", const=True, default=None)
    return p


def normalise_argv(argv: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser: underscores in flag names; dotted --limit-mm-per-prompt.X."""
    out: list[str] = []
    dotted: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            name = "--" + name[2:].replace("_", "-")
            if V >= (0, 10) and name.startswith("--limit-mm-per-prompt."):
                key = name.split(".", 1)[1]
                if not eq:
                    i += 1
                    value = argv[i] if i < len(argv) else ""
                dotted[key] = int(value) if value.isdigit() else value
                i += 1
                continue
            arg = name + eq + value
        out.append(arg)
        i += 1
    if dotted:
        out += ["--limit-mm-per-prompt", json.dumps(dotted)]
    return out


def fail(message: str, code: int = 1, traceback_head: bool = True) -> int:
    """A post-parse error: vLLM raises, so the user sees a traceback's last line on stderr."""
    if traceback_head:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "/usr/local/bin/vllm", line 10, in <module>', file=sys.stderr)
        print("    sys.exit(main())", file=sys.stderr)
    print(message, file=sys.stderr, flush=True)
    return code


def hf_only(model: str) -> bool:
    if os.environ.get("FAKE_VLLM_HF_ONLY") is not None:
        return os.environ["FAKE_VLLM_HF_ONLY"] not in ("", "0")
    owner = model.split("/", 1)[0].lower() if "/" in model else ""
    return owner in HF_ONLY_OWNERS or bool(re.search(r"quantized|fp8|awq|gptq|w4a16", model, re.I))


def data_parallel_problem(args: argparse.Namespace) -> str | None:
    """vLLM 0.33's own checks of the data-parallel flags (vllm/entrypoints/cli/serve.py
    ServeSubcommand.cmd, EngineArgs.create_engine_config), for a dense model such as Mistral.
    The two range checks at the end are approximate (vLLM fails later, in the engine core)."""
    if args.data_parallel_backend not in ("mp", "ray"):
        return (
            f"ValueError: data_parallel_backend must be mp or ray, not {args.data_parallel_backend}"
        )
    if args.headless and args.api_server_count:
        return (
            f"ValueError: --api-server-count={args.api_server_count} cannot be used with "
            "--headless (no API servers are started in headless mode)."
        )
    if args.headless and args.data_parallel_hybrid_lb:
        return "ValueError: data_parallel_hybrid_lb is not applicable in headless mode"
    if args.data_parallel_size > 1 and (
        args.data_parallel_external_lb or args.data_parallel_rank is not None
    ):
        return (
            "ValueError: Non-MoE models do not support external data parallel mode. For "
            "external load balancing, launch independent vLLM instances without "
            "--data-parallel-* arguments."
        )
    local = args.data_parallel_size_local
    if local is not None and not 0 < local <= args.data_parallel_size:
        return f"ValueError: data_parallel_size_local ({local}) must be in 1..data_parallel_size"
    start = args.data_parallel_start_rank
    if start is not None and not 0 <= start < args.data_parallel_size:
        return f"ValueError: data_parallel_start_rank ({start}) out of range"
    return None


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    model = args.model_tag or args.model
    if not model:
        parser.error(
            "the fake vllm needs a model (vllm serve MODEL or --model MODEL); real vLLM would "
            "silently serve Qwen/Qwen3-0.6B"
        )
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        return fail("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")
    if args.tool_call_parser and args.tool_call_parser not in TOOL_PARSERS:
        return fail(
            f"KeyError: 'invalid tool call parser: {args.tool_call_parser} "
            f"(chose from {{ {','.join(TOOL_PARSERS)} }})'"
        )
    if not 0 < args.gpu_memory_utilization <= 1:
        return fail(
            f"ValueError: GPU memory utilization must be within (0, 1]. Got {args.gpu_memory_utilization}."
        )
    dp_problem = data_parallel_problem(args)
    if dp_problem:
        return fail(dp_problem)
    if os.environ.get("FAKE_VLLM_PARSE_ONLY") == "1":
        # For exported commands (msmall export multinode): the argv passed every check.
        print(json.dumps({**vars(args), "model": model}, default=str))
        return 0
    limits = args.limit_mm_per_prompt or {}
    if not isinstance(limits, dict) or any(
        not isinstance(v, int) or v < 0 for v in limits.values()
    ):
        return fail(f"ValueError: Invalid --limit-mm-per-prompt: {limits!r}")
    if hf_only(model) and args.load_format == "mistral":
        log(f"Starting to load model {model}...", "gpu_model_runner.py:2875")
        return fail(
            f"RuntimeError: Cannot find any model weights with `{model}`", traceback_head=False
        )
    if hf_only(model) and args.config_format == "mistral":
        return fail(f"FileNotFoundError: params.json not found in {model}", traceback_head=False)

    try:
        from msmall.simulator.config import SimulatorConfig
        from msmall.simulator.server import serve as run_simulator
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
        from msmall.simulator.config import SimulatorConfig
        from msmall.simulator.server import serve as run_simulator

    kv_tokens = _env_int("FAKE_VLLM_KV_CACHE_TOKENS")
    max_model_len = args.max_model_len
    if max_model_len is None:
        max_model_len = 131072  # vLLM's default: the model's full context
    elif max_model_len == -1:
        max_model_len = kv_tokens or 39120  # "auto": the largest that fits the KV cache
    images = limits.get("image")
    language_only = getattr(args, "language_model_only", False)
    tokenizer_is_mistral = args.tokenizer_mode == "mistral" or (
        args.tokenizer_mode == "auto" and V >= (0, 12) and not hf_only(model)
    )
    fail_modes = {m.strip() for m in os.environ.get("FAKE_VLLM_FAIL", "").split(",") if m.strip()}
    if not (args.enable_auto_tool_choice and args.tool_call_parser):
        fail_modes.add("tools-as-text" if tokenizer_is_mistral else "tool-choice-400")
    leak = os.environ.get("FAKE_VLLM_LEAK_SECRETS", "")
    if leak:
        secret_args = {"model_tag": model, "api_key": args.api_key, "hf_token": args.hf_token}
        log(f"non-default args: {secret_args}", "utils.py:326")
        for var in SECRET_ENV_NAMES:
            if os.environ.get(var):
                log(f"environment: {var}={os.environ[var]}", "envs.py:1", "DEBUG")
        if leak == "die":
            token = os.environ.get("HF_TOKEN") or args.hf_token or args.api_key or ""
            log(f"Invalid credentials {token}", "hub.py:88", "ERROR")
            return fail(
                "RuntimeError: Engine core initialization failed. See root cause above. "
                f"Failed core proc(s): {{}} (token {token})"
            )
    names = args.served_model_name or [model]
    config = SimulatorConfig(
        flavor="vllm",
        host=args.host or "0.0.0.0",  # vLLM's default binds every interface
        port=args.port,
        served_model_name=names[0],
        extra_model_names=tuple(names[1:]),
        model=model,
        api_key=args.api_key or os.environ.get("VLLM_API_KEY") or None,
        vision=not language_only and images != 0,
        max_images_per_prompt=images,
        max_model_len=max_model_len,
        kv_cache_tokens=kv_tokens,
        startup_delay=_env_float("FAKE_VLLM_STARTUP_DELAY"),
        ttft=_env_float("FAKE_VLLM_TTFT"),
        tpot=_env_float("FAKE_VLLM_TPOT"),
        fail=frozenset(fail_modes),
    )
    return run_simulator(config)


def _env_float(name: str) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else 0.0


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    return int(text) if text else None


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        # Like the simulator: a stop during startup exits 0 without a traceback.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: sys.exit(0))
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    parser.add_argument("-v", "--version", action="version", version=VERSION)
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve_parser = build_serve_parser(subparsers)
    for name in ("chat", "complete", "bench", "collect-env", "run-batch"):
        subparsers.add_parser(name, add_help=False)
    if argv and argv[0] == "serve":
        log("Automatically detected platform cuda.")
        argv = ["serve", *normalise_argv(argv[1:])]
    args, extra = parser.parse_known_args(argv)
    if args.subparser is None:
        parser.print_help()
        return 1
    if args.subparser != "serve":
        print(f"fake vllm: '{args.subparser}' is not simulated", file=sys.stderr)
        return 2
    if extra:
        serve_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return serve(args, serve_parser)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
