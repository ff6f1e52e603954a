"""The benchmark's arithmetic: percentiles, per-run summaries, medians and ratios."""

from __future__ import annotations

import pytest

from tsvllm.bench.load import percentile, summarize
from tsvllm.bench.serve import median_of, parse_shape, ratios, side_ratios


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0


def test_summary_counts_tokens_from_usage_and_separates_errors():
    samples = [
        {"latency_s": 0.5, "tokens": 32, "ttft_s": 0.02, "itl_s": 0.01},
        {"latency_s": 1.5, "tokens": 32, "ttft_s": 0.04, "itl_s": 0.03},
        {"latency_s": 0.1, "tokens": 0, "error": "ConnectError()"},
    ]
    s = summarize(samples, wall_s=2.0)
    assert (s["requests"], s["errors"], s["tokens"]) == (3, 1, 64)
    assert (s["tok_per_s"], s["req_per_s"]) == (32.0, 1.0)
    assert s["ttft_p50_ms"] == 20.0 and s["itl_p50_ms"] == 20.0


def test_medians_over_rounds_and_ratios_b_over_a():
    a_runs = [
        {"tok_per_s": 100.0, "ttft_p50_ms": 20.0},
        {"tok_per_s": 120.0, "ttft_p50_ms": 30.0},
        {"tok_per_s": 110.0, "ttft_p50_ms": 25.0},
    ]
    a = {
        "non_stream": median_of(a_runs),
        "stream": median_of(a_runs),
        "cold_start_s": 20.0,
        "peak_rss_mb": 3000.0,
    }
    b = {
        "non_stream": {"tok_per_s": 99.0},
        "stream": {"tok_per_s": 88.0, "ttft_p50_ms": 28.0},
        "cold_start_s": 22.0,
        "peak_rss_mb": 3200.0,
    }
    assert a["stream"] == {
        "tok_per_s": 110.0,
        "ttft_p50_ms": 25.0,
        "rounds_tok_per_s": [100.0, 120.0, 110.0],
    }
    assert ratios(a, b) == {
        "non_stream_tok_per_s": 0.9,
        "stream_tok_per_s": 0.8,
        "stream_ttft_p50_ms": 1.12,  # a ratio for every figure both sides have
        "stream_ttft_p50_overhead_ms": 3.0,
    }
    assert side_ratios(a, b) == {"cold_start": 1.1, "peak_rss_delta_mb": 200.0}


def test_load_shapes():
    assert parse_shape("256x64x64") == (256, 64, 64)
    with pytest.raises(ValueError, match="REQUESTSxCONCURRENCYxTOKENS"):
        parse_shape("256x64")


@pytest.mark.parametrize("missing", ["non_stream", "stream"])
def test_ratios_skip_a_mode_that_was_not_run(missing):
    side = {"non_stream": {"tok_per_s": 1.0}, "stream": {"tok_per_s": 1.0}}
    del side[missing]
    assert f"{missing}_tok_per_s" not in ratios(side, side)


def test_table_shows_ttft_p50_and_p99_and_dashes_for_non_streaming():
    from tsvllm.bench.serve import render

    m = {"tok_per_s": 100.0, "req_per_s": 3.1, "latency_p50_ms": 300.0, "latency_p99_ms": 400.0}
    streamed = {**m, "ttft_p50_ms": 21.5, "ttft_p99_ms": 58.25, "itl_p50_ms": 5.1}
    side = {
        "shapes": {"64x16x32": {"non_stream": m, "stream": streamed}},
        "cold_start_s": 26.0,
        "peak_rss_mb": 3400.0,
    }
    table = render({"sides": {"a": side}, "ratios": {}}).splitlines()
    assert "TTFT p50" in table[0] and "TTFT p99" in table[0]
    assert table[1].split()[5:8] == ["-", "-", "-"]  # no TTFT or ITL without streaming
    assert table[2].split()[5:8] == ["21.5", "58.2", "5.10"]
