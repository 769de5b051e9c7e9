"""Metrics math: per-request figures as vLLM's benchmarks define them, percentiles, goodput."""

from __future__ import annotations

import random

import pytest

from msmall.bench import metrics, workload
from msmall.bench.client import SSEParser, Target


def _req(ttft: float, gaps: list[float], usage: int | None, kind: str = "chat"):
    r = metrics.RequestResult(kind=kind, started=10.0, ttft=ttft, usage_tokens=usage)
    t = 10.0 + ttft
    for gap in gaps:
        t += gap
        r.itl.append(gap)
    r.end = t
    r.chunks = len(gaps) + 1
    return r


def test_tpot_is_e2e_minus_ttft_over_tokens_minus_one() -> None:
    r = _req(0.5, [0.02] * 9, usage=10)
    assert r.e2e == pytest.approx(0.5 + 0.18)
    assert r.tpot == pytest.approx(0.02)
    # usage wins over the chunk count (a chunk may carry several tokens)
    r2 = _req(0.5, [0.04] * 4, usage=9)
    assert r2.output_tokens == 9 and r2.tpot == pytest.approx(0.16 / 8)
    assert _req(0.5, [], usage=1).tpot is None  # one token: no TPOT (vLLM: not in tpots)


def test_percentiles_match_numpy_linear() -> None:
    values = sorted(random.Random(1).random() for _ in range(101))
    assert metrics.percentile(values, 50) == values[50]
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert metrics.percentile([5.0], 99) == 5.0
    s = metrics.summarize([1.0, 2.0, 3.0, 4.0])
    assert s == pytest.approx(
        {"mean": 2.5, "p50": 2.5, "p90": 3.7, "p95": 3.85, "p99": 3.97, "max": 4.0}
    )
    assert metrics.summarize([]) is None


def test_level_figures_errors_rates_goodput_and_usage_warning() -> None:
    good = _req(0.1, [0.01] * 9, usage=10)
    slow = _req(0.9, [0.01] * 9, usage=10)
    counted = _req(0.1, [0.01] * 4, usage=None)
    tool_ok = _req(0.1, [0.01], usage=2, kind="tools")
    tool_ok.tool_ok = True
    tool_bad = _req(0.1, [0.01], usage=2, kind="tools")
    tool_bad.tool_ok = False
    failed = metrics.RequestResult(kind="chat", error="http_503")
    fig = metrics.level_figures(
        [good, slow, counted, tool_ok, tool_bad, failed], 2.0, {"ttft": 0.5, "tpot": 0.05}
    )
    assert fig["requests"] == 5
    assert fig["errors"] == {"http_503": 1}
    assert fig["output_tokens"] == 10 + 10 + 5 + 2 + 2
    assert fig["requests_per_s"] == 2.5
    assert fig["tool_call_ok_rate"] == 0.5
    assert fig["vision_ok_rate"] is None
    assert fig["goodput_rps"] == pytest.approx(4 / 2.0)  # all but the slow one
    assert not fig["usage_reported"] and "no usage" in fig["warnings"][0]
    assert len(fig["itl_s"]) == 6 and fig["itl_s"]["max"] == pytest.approx(0.01)
    assert metrics.level_figures([good], 1.0)["goodput_rps"] is None


def test_length_check_warns_when_ignore_eos_is_ignored() -> None:
    r = _req(0.1, [0.01] * 4, usage=5)
    r.expect_tokens = 128
    assert "asked length" in metrics.level_figures([r], 1.0)["warnings"][0]


def test_slo_and_mix_parsing() -> None:
    assert metrics.parse_slo("ttft=0.5,tpot=0.05") == {"ttft": 0.5, "tpot": 0.05}
    for bad in ("ttft", "foo=1", "ttft=x", "ttft=0", ""):
        with pytest.raises(ValueError):
            metrics.parse_slo(bad)
    assert workload.parse_mix("chat=70,tools=20,vision=10") == {
        "chat": 70, "tools": 20, "vision": 10,
    }  # fmt: skip
    for bad in ("chat", "audio=1", "chat=-1", "chat=0", "chat=x"):
        with pytest.raises(ValueError):
            workload.parse_mix(bad)


def test_workload_follows_the_mix_and_asks_exact_lengths() -> None:
    work = workload.Workload("m", {"chat": 2, "tools": 1, "vision": 1}, 16, 32)
    reqs = [work.next() for _ in range(40)]
    assert [r.kind for r in reqs].count("chat") == 20
    chat = next(r for r in reqs if r.kind == "chat")
    assert chat.body["max_tokens"] == 32 and chat.body["ignore_eos"] is True
    assert chat.body["stream_options"] == {"include_usage": True}
    assert len(chat.body["messages"][0]["content"].split()) == 16
    vision = next(r for r in reqs if r.kind == "vision")
    url = vision.body["messages"][0]["content"][1]["image_url"]["url"]
    from msmall.simulator.images import decode_data_url, inspect_image

    assert inspect_image(decode_data_url(url)).colour == vision.expect_colour


def test_tool_call_scoring() -> None:
    def call(name: str, args: str) -> list[dict]:
        return [{"function": {"name": name, "arguments": args}}]

    assert workload.score_tool_call(call("get_weather", '{"city": "Lyon"}'), "get_weather")[0]
    assert not workload.score_tool_call([], "get_weather")[0]
    assert not workload.score_tool_call(call("get_time", '{"timezone": "x"}'), "get_weather")[0]
    assert not workload.score_tool_call(call("get_weather", "{city: Lyon"), "get_weather")[0]
    ok, why = workload.score_tool_call(call("get_weather", '{"town": "Lyon"}'), "get_weather")
    assert not ok and "city" in why
    ok, why = workload.score_tool_call(
        call("convert_currency", '{"amount": -1, "from_currency": "EUR", "to_currency": "XXX"}'),
        "convert_currency",
    )
    assert not ok and "minimum" in why
    assert workload.score_vision("The image is mostly Red.", "red")[0]
    assert not workload.score_vision("blue", "red")[0]
    assert not workload.score_vision("red or blue", "red")[0]


def test_sse_parser_splits_events_across_reads() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"a":1}\n\ndata: {"b"') == [b'{"a":1}']
    assert p.feed(b":2}\r\n\r\n: ping\n\ndata: [DONE]\n\n") == [b'{"b":2}', b"[DONE]"]


def test_target_from_url() -> None:
    t = Target.from_url("http://127.0.0.1:8000/v1/")
    assert (t.host, t.port, t.base_path, t.host_header) == ("127.0.0.1", 8000, "", "127.0.0.1:8000")
    assert Target.from_url("https://example.com/proxy").port == 443
    with pytest.raises(ValueError):
        Target.from_url("ftp://x")
