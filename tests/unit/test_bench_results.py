"""The JSON result's shape, the history in the state dir, and compare."""

from __future__ import annotations

import json

import pytest

from msmall.bench import metrics, results, runner
from msmall.errors import ConfigError


def _result(tps: float, ttft: float, started: float = 1_700_000_000.0) -> dict:
    r = metrics.RequestResult(kind="chat", started=0.0, ttft=ttft, usage_tokens=3)
    r.itl, r.end, r.chunks = [0.01, 0.01], ttft + 0.02, 3
    outcome = runner.LevelOutcome(runner.LevelSpec(concurrency=4), [r], 3 / tps, cpu_percent=3.0)
    return {
        "version": results.RESULT_VERSION,
        "target": {"url": "http://x", "model": "m/x", "engine": None, "engine_version": None},
        "started_at": "2026-12-01T10:00:00+00:00",
        "started_at_unix": started,
        "levels": [runner.level_json(outcome, None)],
    }


def test_level_json_has_every_field_of_the_issue() -> None:
    result = _result(100.0, 0.2)
    assert results.check_result(result) == []
    level = result["levels"][0]
    assert level["concurrency"] == 4
    for key in ("mean", "p50", "p90", "p95", "p99", "max"):
        assert key in level["ttft_s"]
    assert level["client"] == {
        "cpu_percent": 3.0, "loop_lag_p99_s": 0.0, "loop_lag_max_s": 0.0,
        "max_in_flight": 0, "bottleneck": False,
    }  # fmt: skip
    json.dumps(result)  # plain JSON
    broken = {**result, "levels": [{k: v for k, v in level.items() if k != "tpot_s"}]}
    assert "levels[0]: missing tpot_s" in results.check_result(broken)


def test_bottleneck_flag_from_lag_cpu_and_achieved_rate() -> None:
    spec = runner.LevelSpec(concurrency=1)
    lagging = runner.LevelOutcome(spec, [], 1.0, loop_lag_p99_s=0.02)
    level = runner.level_json(lagging, None)
    assert level["client"]["bottleneck"] and "distorted" in level["warnings"][-1]
    slow = runner.LevelOutcome(runner.LevelSpec(rate=10.0), [], 1.0, achieved_rate=7.0)
    assert runner.level_json(slow, None)["client"]["bottleneck"]


def test_save_history_load_and_compare() -> None:
    a, b = _result(100.0, 0.2), _result(150.0, 0.1, started=1_700_000_100.0)
    path_a = results.save(a)
    results.save(b)
    assert path_a.parent == results.history_dir() and path_a.stem == a["id"]
    rows = results.history()
    assert [r["id"] for r in rows] == [a["id"], b["id"]]
    assert rows[1]["best_output_tokens_per_s"] == pytest.approx(150.0)
    data = results.compare(
        results.load(a["id"]), results.load(str(results.history_dir() / f"{b['id']}.json"))
    )
    (level,) = data["levels"]
    rows = {m["metric"]: m for m in level["metrics"]}
    assert rows["output_tokens_per_s"]["change_pct"] == pytest.approx(50.0)
    assert rows["output_tokens_per_s"]["better"] is True
    assert rows["ttft_s.mean"]["change_pct"] == pytest.approx(-50.0)
    assert rows["ttft_s.mean"]["better"] is True


def test_same_second_runs_do_not_overwrite() -> None:
    first, second = results.save(_result(1.0, 0.1)), results.save(_result(1.0, 0.1))
    assert first != second and first.exists() and second.exists()


def test_load_errors_are_plain() -> None:
    with pytest.raises(ConfigError, match="no bench result"):
        results.load("nope")
    bad = results.history_dir() / "bad.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"version": 99}')
    with pytest.raises(ConfigError, match="not a bench result"):
        results.load("bad")


def test_plot_without_matplotlib_is_a_plain_error(monkeypatch, tmp_path) -> None:
    import sys

    from msmall.bench.plot import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="matplotlib") as exc:
        plot(_result(10.0, 0.1), tmp_path / "x.png")
    assert exc.value.fix == "pip install 'msmall[plot]'"


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the optional plot extra is not installed")
    from msmall.bench.plot import plot

    path = plot(_result(10.0, 0.1), tmp_path / "out" / "x.png")
    assert path.read_bytes().startswith(b"\x89PNG")
