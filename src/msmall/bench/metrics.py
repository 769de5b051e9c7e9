"""What each figure means, in one place (docs/bench.md explains each with its reference).

Per request (`RequestResult`), following vLLM 0.33 `vllm/benchmarks/lib/endpoint_request_func.py`
(`async_request_openai_chat_completions`) and `vllm/benchmarks/serve.py` (`calculate_metrics`):

* TTFT: request written -> first chunk whose delta carries content, reasoning or a tool call.
  The opening role-only chunk (`{"role": "assistant", "content": ""}`) is never a token.
* ITL: the gaps between successive token chunks (vLLM's `output.itl`).
* e2e: request written -> the last token chunk (vLLM: `most_recent_timestamp - st`).
* TPOT: (e2e - TTFT) / (output tokens - 1), only for requests with more than one token
  (guidellm calls the same figure `inter_token_latency_ms`, request_stats.py).
* output tokens: `usage.completion_tokens` of the `stream_options.include_usage` chunk; where
  the server sends none, the token chunks are counted and the level carries a warning.

Per level: percentiles by linear interpolation between closest ranks (numpy's default, which
vLLM uses), throughput over the measured window, goodput = requests meeting every SLO / window
(vLLM's `request_goodput`; a request with one token has TPOT 0 for the SLO, as there).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 95, 99)


@dataclass
class RequestResult:
    kind: str
    started: float = 0.0  # perf_counter when the request was written
    ttft: float | None = None
    end: float | None = None  # the last token chunk
    itl: list[float] = field(default_factory=list)
    chunks: int = 0  # token chunks seen
    usage_tokens: int | None = None
    error: str | None = None  # the kind, None when the request succeeded
    error_detail: str = ""
    tool_ok: bool | None = None
    vision_ok: bool | None = None
    check_detail: str = ""
    expect_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.started

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks

    @property
    def tpot(self) -> float | None:
        n = self.output_tokens
        if self.ttft is None or self.e2e is None or n <= 1:
            return None
        return (self.e2e - self.ttft) / (n - 1)


def percentile(sorted_values: list[float], p: float) -> float:
    """numpy.percentile's default ("linear"): rank (n-1)*p/100, interpolated."""
    if not sorted_values:
        raise ValueError("no values")
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    out = {"mean": sum(ordered) / len(ordered)}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(ordered, p)
    out["max"] = ordered[-1]
    return out


def parse_slo(text: str) -> dict[str, float]:
    """``ttft=0.5,tpot=0.05`` (seconds) -> {"ttft": 0.5, "tpot": 0.05}; also e2e."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if name not in ("ttft", "tpot", "e2e") or not sep:
            raise ValueError(f"'{part}': use ttft=S, tpot=S or e2e=S (seconds)")
        try:
            slo[name] = float(value)
        except ValueError:
            raise ValueError(f"'{part}': {value!r} is not a number of seconds") from None
        if slo[name] <= 0:
            raise ValueError(f"'{part}': the limit must be above 0")
    if not slo:
        raise ValueError("the SLO names no limit")
    return slo


def meets_slo(result: RequestResult, slo: dict[str, float]) -> bool:
    figures = {"ttft": result.ttft, "tpot": result.tpot or 0.0, "e2e": result.e2e}
    return all(figures[k] is not None and figures[k] <= limit for k, limit in slo.items())


def _rate(results: list[RequestResult], attr: str) -> float | None:
    scored = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return sum(1 for v in scored if v) / len(scored) if scored else None


def level_figures(
    results: list[RequestResult], window_s: float, slo: dict[str, float] | None = None
) -> dict[str, Any]:
    """The figures of one level from its measured requests (warm-up already left out)."""
    done = [r for r in results if r.ok]
    errors = Counter(r.error for r in results if not r.ok)
    # A wrong tool call is counted in tool_call_ok_rate, not as an error, so the rate says how
    # often tools work; a request that failed outright is neither right nor wrong there.
    window = max(window_s, 1e-9)
    itl = [gap for r in done for gap in r.itl]
    tokens = sum(r.output_tokens for r in done)
    no_usage = sum(1 for r in done if r.usage_tokens is None)
    length_off = sum(
        1
        for r in done
        if r.expect_tokens is not None
        and r.usage_tokens is not None
        and r.usage_tokens != r.expect_tokens
    )
    warnings = []
    if no_usage:
        warnings.append(
            f"{no_usage} of {len(done)} answers carried no usage (stream_options.include_usage): "
            "their tokens were counted as chunks"
        )
    if length_off:
        warnings.append(
            f"{length_off} chat answers did not have the asked length "
            "(the server ignores ignore_eos or caps max_tokens)"
        )
    return {
        "requests": len(done),
        "errors": dict(sorted(errors.items())),
        "ttft_s": summarize([r.ttft for r in done if r.ttft is not None]),
        "tpot_s": summarize([t for r in done if (t := r.tpot) is not None]),
        "itl_s": summarize(itl),
        "e2e_s": summarize([e for r in done if (e := r.e2e) is not None]),
        "output_tokens": tokens,
        "duration_s": window_s,
        "requests_per_s": len(done) / window,
        "output_tokens_per_s": tokens / window,
        "tool_call_ok_rate": _rate(done, "tool_ok"),
        "vision_ok_rate": _rate(done, "vision_ok"),
        "goodput_rps": (sum(1 for r in done if meets_slo(r, slo)) / window) if slo else None,
        "usage_reported": no_usage == 0,
        "warnings": warnings,
    }
