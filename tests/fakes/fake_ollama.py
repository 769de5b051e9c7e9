"""A stand-in for the ``ollama`` CLI, for tests: ``ollama serve`` runs the msmall simulator.

- ``ollama --version``: asks the server at OLLAMA_HOST like the real client. Server up:
  ``ollama version is 0.33.0``. Server down: the real client's two warnings,
  ``Warning: could not connect to a running Ollama instance`` and
  ``Warning: client version is 0.33.0`` (version from FAKE_OLLAMA_VERSION).
- ``ollama serve``: the simulator (ollama flavor) on OLLAMA_HOST (default 127.0.0.1:11434),
  pulls persisted under OLLAMA_MODELS (default ~/.ollama/models) like the real store.
- ``ollama pull|list|ls|ps|stop|rm|run``: small HTTP clients of that server, printing what the
  real CLI prints (progress lines, tables, ``Error: ...`` with exit 1).
- Anything else: ``Error: unknown command "x" for "ollama"``, exit 1 (cobra's wording).

Simulator knobs from the environment: FAKE_OLLAMA_FAIL (comma-separated simulator --fail
modes), FAKE_OLLAMA_LOAD_DELAY (model load seconds), FAKE_OLLAMA_TTFT, FAKE_OLLAMA_TPOT,
FAKE_OLLAMA_PULL_TOTAL_BYTES, FAKE_OLLAMA_PULL_SECONDS, FAKE_OLLAMA_PULLED=1 (the default tag is
already pulled). OLLAMA_CONTEXT_LENGTH and OLLAMA_KEEP_ALIVE work as in the real server.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

VERSION = os.environ.get("FAKE_OLLAMA_VERSION", "0.33.0")
DEFAULT_HOST = "127.0.0.1:11434"
CONNECT_ERROR = "Error: could not connect to ollama server, run 'ollama serve' to start it"
USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  push        Push a model to a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command."""
KNOWN_COMMANDS = {
    "serve",
    "create",
    "show",
    "run",
    "stop",
    "pull",
    "push",
    "list",
    "ls",
    "ps",
    "cp",
    "rm",
    "help",
}


def _import_simulator():
    try:
        import msmall.simulator.config as config_module
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
        import msmall.simulator.config as config_module
    return config_module


def host_port() -> tuple[str, int]:
    config = _import_simulator()
    return config.parse_ollama_host(os.environ.get("OLLAMA_HOST") or DEFAULT_HOST)


def base_url() -> str:
    host, port = host_port()
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def request(method: str, path: str, body: dict | None = None, timeout: float = 30.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url() + path, data=data, method=method)
    # No proxy: the server is on this machine, and a proxy from the environment must not interfere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(req, timeout=timeout)


def api_json(method: str, path: str, body: dict | None = None) -> dict:
    try:
        with request(method, path, body) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except (ValueError, AttributeError):
            message = str(exc)
        raise CliError(f"Error: {message}") from exc
    except OSError as exc:
        raise CliError(CONNECT_ERROR) from exc


class CliError(Exception):
    pass


# Commands ------------------------------------------------------------------------------------


def cmd_version() -> int:
    try:
        server = api_json("GET", "/api/version").get("version", "")
    except CliError:
        server = ""
    if not server:
        print("Warning: could not connect to a running Ollama instance")
    else:
        print(f"ollama version is {server}")
    if server != VERSION:
        print(f"Warning: client version is {VERSION}")
    return 0


def cmd_serve() -> int:
    config_module = _import_simulator()
    from msmall.simulator.server import serve

    host, port = host_port()
    models_dir = os.environ.get("OLLAMA_MODELS") or str(Path.home() / ".ollama" / "models")
    fail = {m.strip() for m in os.environ.get("FAKE_OLLAMA_FAIL", "").split(",") if m.strip()}
    config = config_module.SimulatorConfig(
        flavor="ollama",
        host=host,
        port=port,
        startup_delay=_env_float("FAKE_OLLAMA_LOAD_DELAY", 0.0),
        ttft=_env_float("FAKE_OLLAMA_TTFT", 0.0),
        tpot=_env_float("FAKE_OLLAMA_TPOT", 0.0),
        fail=frozenset(fail),
        pull_total_bytes=int(_env_float("FAKE_OLLAMA_PULL_TOTAL_BYTES", 15_000_000_000)),
        pull_duration=_env_float("FAKE_OLLAMA_PULL_SECONDS", 0.2),
        pulled=os.environ.get("FAKE_OLLAMA_PULLED", "") not in ("", "0"),
        models_dir=models_dir,
    )
    return serve(config)


def cmd_pull(args: list[str]) -> int:
    if len(args) != 1:
        print(f"Error: accepts 1 arg(s), received {len(args)}", file=sys.stderr)
        return 1
    try:
        response = request("POST", "/api/pull", {"model": args[0]}, timeout=600)
    except OSError:
        print(CONNECT_ERROR, file=sys.stderr)
        return 1
    last_status = ""
    with response:
        for raw in response:
            line = json.loads(raw)
            if "error" in line:
                print(f"Error: {line['error']}", file=sys.stderr)
                return 1
            status = line.get("status", "")
            if "total" in line:
                if line.get("completed") == line["total"]:
                    print(f"{status}: 100% {_human_bytes(line['total'])}")
            elif status != last_status:
                print(status)
            last_status = status
    return 0


def cmd_list() -> int:
    models = api_json("GET", "/api/tags").get("models", [])
    print(f"{'NAME':<45}{'ID':<16}{'SIZE':<10}MODIFIED")
    for model in models:
        print(
            f"{model['name']:<45}{model['digest'][:12]:<16}{_human_bytes(model['size']):<10}Less than a second ago"
        )
    return 0


def cmd_ps() -> int:
    models = api_json("GET", "/api/ps").get("models", [])
    print(f"{'NAME':<45}{'ID':<16}{'SIZE':<10}{'PROCESSOR':<17}{'CONTEXT':<11}UNTIL")
    for model in models:
        size, vram = model["size"], model["size_vram"]
        if vram >= size:
            processor = "100% GPU"
        else:
            cpu = round(100 * (size - vram) / size)
            processor = f"{cpu}%/{100 - cpu}% CPU/GPU"
        print(
            f"{model['name']:<45}{model['digest'][:12]:<16}{_human_bytes(size):<10}"
            f"{processor:<17}{model.get('context_length', ''):<11}4 minutes from now"
        )
    return 0


def cmd_stop(args: list[str]) -> int:
    if len(args) != 1:
        print(f"Error: accepts 1 arg(s), received {len(args)}", file=sys.stderr)
        return 1
    api_json("POST", "/api/generate", {"model": args[0], "keep_alive": 0})
    return 0


def cmd_rm(args: list[str]) -> int:
    for name in args:
        api_json("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_run(args: list[str]) -> int:
    if not args:
        print("Error: requires at least 1 arg(s), only received 0", file=sys.stderr)
        return 1
    name, prompt = args[0], " ".join(args[1:])
    reply = api_json("POST", "/api/generate", {"model": name, "prompt": prompt, "stream": False})
    if prompt:
        print(reply.get("response", ""))
    return 0


def _human_bytes(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        # Like the simulator: a stop during startup exits 0 without a traceback.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: sys.exit(0))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command in ("-v", "--version"):
        return cmd_version()
    if command not in KNOWN_COMMANDS:
        print(f'Error: unknown command "{command}" for "ollama"', file=sys.stderr)
        print("Run 'ollama --help' for usage.", file=sys.stderr)
        return 1
    handlers = {
        "serve": lambda: cmd_serve(),
        "pull": lambda: cmd_pull(args),
        "list": lambda: cmd_list(),
        "ls": lambda: cmd_list(),
        "ps": lambda: cmd_ps(),
        "stop": lambda: cmd_stop(args),
        "rm": lambda: cmd_rm(args),
        "run": lambda: cmd_run(args),
    }
    if command not in handlers:
        print(f"fake ollama: '{command}' is not simulated", file=sys.stderr)
        return 2
    try:
        return handlers[command]()
    except CliError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
