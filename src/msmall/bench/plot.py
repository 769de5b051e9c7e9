"""A PNG of a bench result: latency, throughput and OK rates against the load.

matplotlib is an optional extra (`pip install 'msmall[plot]'`) so the base install stays light;
it is imported here only, when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msmall.errors import ConfigError


def plot(result: dict[str, Any], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed",
            "pip install 'msmall[plot]'",
        ) from None
    levels = result.get("levels") or []
    by_rate = bool(levels) and "rate" in levels[0]
    xs = [lv["rate"] if by_rate else lv["concurrency"] for lv in levels]
    xlabel = "request rate (req/s)" if by_rate else "concurrency"

    def series(key: str, stat: str) -> list[float | None]:
        return [((lv.get(key) or {}).get(stat)) for lv in levels]

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    for key, label in (("ttft_s", "TTFT"), ("e2e_s", "e2e")):
        ax.plot(xs, series(key, "p50"), marker="o", label=f"{label} p50")
        ax.plot(xs, series(key, "p99"), marker="x", linestyle="--", label=f"{label} p99")
    ax.set_title("latency (s)")
    ax = axes[0][1]
    for key, label in (("tpot_s", "TPOT"), ("itl_s", "ITL")):
        ax.plot(xs, [v * 1000 if v else None for v in series(key, "p50")], marker="o",
                label=f"{label} p50")  # fmt: skip
        ax.plot(xs, [v * 1000 if v else None for v in series(key, "p99")], marker="x",
                linestyle="--", label=f"{label} p99")  # fmt: skip
    ax.set_title("time per token (ms)")
    ax = axes[1][0]
    ax.plot(xs, [lv["output_tokens_per_s"] for lv in levels], marker="o", label="output tok/s")
    ax.set_title("throughput")
    twin = ax.twinx()
    twin.plot(xs, [lv["requests_per_s"] for lv in levels], marker="s", color="gray",
              label="req/s")  # fmt: skip
    twin.set_ylabel("req/s")
    ax = axes[1][1]
    for key, label in (("tool_call_ok_rate", "tool calls OK"), ("vision_ok_rate", "vision OK")):
        values = [lv.get(key) for lv in levels]
        if any(v is not None for v in values):
            ax.plot(xs, [v * 100 if v is not None else None for v in values], marker="o",
                    label=label)  # fmt: skip
    ax.set_ylim(-5, 105)
    ax.set_title("correct answers (%)")
    for row in axes:
        for ax in row:
            ax.set_xlabel(xlabel)
            if not by_rate and len(xs) > 1 and min(xs) > 0:
                ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    target = result.get("target") or {}
    fig.suptitle(f"msmall bench: {target.get('model')} at {target.get('url')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
