"""The versioned JSON result, the history of runs in the state dir, and compare.

A result is plain JSON (`RESULT_VERSION` bumps on any change of meaning). `--save` writes it to
``<state dir>/bench/<id>.json`` atomically; `--history` lists them; `--compare A B` takes two ids
or file paths and gives each level's change in percent.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from msmall import paths
from msmall.errors import ConfigError

RESULT_VERSION = 1
REQUIRED_LEVEL_FIELDS = (
    "requests",
    "errors",
    "ttft_s",
    "tpot_s",
    "itl_s",
    "e2e_s",
    "output_tokens",
    "requests_per_s",
    "output_tokens_per_s",
    "tool_call_ok_rate",
    "vision_ok_rate",
    "goodput_rps",
    "client",
)
# Figures compared, and whether a rise is better.
COMPARED: dict[str, bool] = {
    "ttft_s.mean": False,
    "ttft_s.p99": False,
    "tpot_s.mean": False,
    "tpot_s.p99": False,
    "itl_s.p99": False,
    "e2e_s.mean": False,
    "requests_per_s": True,
    "output_tokens_per_s": True,
    "tool_call_ok_rate": True,
    "vision_ok_rate": True,
    "goodput_rps": True,
}


def history_dir() -> Path:
    return paths.state_dir() / "bench"


def check_result(result: dict[str, Any]) -> list[str]:
    """Problems with a result's shape (empty when it is a valid version-1 result)."""
    problems = []
    if result.get("version") != RESULT_VERSION:
        problems.append(f"version is {result.get('version')!r}, not {RESULT_VERSION}")
    for key in ("target", "started_at", "levels"):
        if key not in result:
            problems.append(f"missing {key}")
    for n, level in enumerate(result.get("levels") or []):
        if "concurrency" not in level and "rate" not in level:
            problems.append(f"levels[{n}]: neither concurrency nor rate")
        for key in REQUIRED_LEVEL_FIELDS:
            if key not in level:
                problems.append(f"levels[{n}]: missing {key}")
        for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            stats = level.get(key)
            if stats is not None and set(stats) < {"mean", "p50", "p90", "p95", "p99", "max"}:
                problems.append(f"levels[{n}].{key}: missing statistics")
        client = level.get("client") or {}
        for key in ("cpu_percent", "loop_lag_p99_s", "bottleneck"):
            if key not in client:
                problems.append(f"levels[{n}].client: missing {key}")
    return problems


def run_id(result: dict[str, Any]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(result.get("started_at_unix", time.time())))
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(result.get("target", {}).get("model") or "x"))
    return f"{stamp}-{model}"[:120]


def save(result: dict[str, Any]) -> Path:
    base = run_id(result)
    path = history_dir() / f"{base}.json"
    n = 1
    while path.exists():
        n += 1
        path = history_dir() / f"{base}-{n}.json"
    result["id"] = path.stem
    paths.atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def history() -> list[dict[str, Any]]:
    """One line per saved run, oldest first."""
    folder = history_dir()
    rows = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        levels = data.get("levels") or []
        rows.append(
            {
                "id": f.stem,
                "started_at": data.get("started_at"),
                "url": (data.get("target") or {}).get("url"),
                "model": (data.get("target") or {}).get("model"),
                "levels": [lv.get("concurrency", lv.get("rate")) for lv in levels],
                "load": "rate" if levels and "rate" in levels[0] else "concurrency",
                "best_output_tokens_per_s": max(
                    (lv.get("output_tokens_per_s") or 0 for lv in levels), default=0
                ),
            }
        )
    return rows


def load(ref: str) -> dict[str, Any]:
    """A saved run by id, or a result file by path."""
    path = Path(ref)
    if not path.is_file():
        path = history_dir() / f"{ref}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no bench result '{ref}'", "See `msmall bench --history` for saved runs."
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the bench result '{ref}': {exc}") from None
    problems = check_result(data) if isinstance(data, dict) else ["not a JSON object"]
    if problems:
        raise ConfigError(f"'{ref}' is not a bench result: {problems[0]}")
    return data


def _get(level: dict[str, Any], dotted: str) -> float | None:
    value: Any = level
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def level_key(level: dict[str, Any]) -> tuple[str, float]:
    return ("rate", level["rate"]) if "rate" in level else ("concurrency", level["concurrency"])


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Each level present in both runs: the figures of A and B and B's change in percent."""
    by_key = {level_key(lv): lv for lv in a.get("levels") or []}
    levels = []
    for lv_b in b.get("levels") or []:
        key = level_key(lv_b)
        lv_a = by_key.get(key)
        if lv_a is None:
            continue
        rows = []
        for name, higher_better in COMPARED.items():
            va, vb = _get(lv_a, name), _get(lv_b, name)
            if va is None or vb is None:
                continue
            change = None if va == 0 else (vb - va) / abs(va) * 100
            better = None if change is None or change == 0 else (change > 0) == higher_better
            rows.append({"metric": name, "a": va, "b": vb, "change_pct": change, "better": better})
        levels.append({key[0]: key[1], "metrics": rows})
    return {
        "a": a.get("id") or a.get("started_at"),
        "b": b.get("id") or b.get("started_at"),
        "levels": levels,
    }
