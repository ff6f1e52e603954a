"""``tsvllm bench serve --engine null`` as a user runs it: vLLM's own server and TorchServe +
VLLMHandler, both on the null engine, one short round. The JSON has both sides' figures for
every shape and mode, each b/a ratio is b's figure over a's, the per-role CPU split adds up
and lands on the right processes, and every request got exactly its tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).parents[2] / "model_configs" / "tiny-cpu.yaml"
SHAPES = ("24x8x8", "chat:12x4x40")
ROLES = ("server", "frontend", "engine")


@pytest.fixture(scope="module")
def report(tiny_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench-null")
    out = root / "bench.json"
    cmd = [
        *(sys.executable, "-m", "tsvllm.cli", "bench", "serve"),
        *("--model-dir", str(tiny_model), "--config", str(CONFIG)),
        *("--sides", "a,b", "--engine", "null"),
        *("--shapes", ",".join(SHAPES), "--rounds", "1", "--warmup", "0"),
        *("--workdir", str(root / "work"), "--json", str(out)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_report_names_the_null_engine_and_has_both_sides_for_every_shape(report):
    assert report["load"]["engine"] == "null"
    assert report["load"]["null_tokens_per_s"] == 0
    assert report["load"]["ts_workers"] == 1
    assert "null engine" in report["title"]
    for side in ("a", "b"):
        shapes = report["sides"][side]["shapes"]
        assert set(shapes) == set(SHAPES)
        for shape, modes in shapes.items():
            requests, _, tokens = (int(x) for x in shape.rpartition(":")[2].split("x"))
            assert set(modes) == {"non_stream", "stream"}
            for mode, figures in modes.items():
                assert figures["errors"] == 0, (side, shape, mode)
                # the null engine gives every request exactly max_tokens (ignore_eos)
                assert figures["tokens"] == requests * tokens, (side, shape, mode)
                assert figures["tok_per_s"] > 0 and figures["cpu_ms_per_req_engine"] > 0
            assert modes["stream"]["chunks"] >= requests
            assert modes["stream"]["cpu_ms_per_chunk_serving"] > 0


def test_the_cpu_split_adds_up_and_lands_on_each_sides_processes(report):
    for side in ("a", "b"):
        for modes in report["sides"][side]["shapes"].values():
            for f in modes.values():
                roles = [f[f"cpu_ms_per_req_{role}"] for role in ROLES]
                assert f["cpu_ms_per_req_serving"] == pytest.approx(roles[0] + roles[1], abs=0.01)
                assert f["cpu_ms_per_req_total"] == pytest.approx(sum(roles), abs=0.01)
                frontend = f["cpu_ms_per_req_frontend"]
                # a has no Java frontend; b's TorchServe frontend does work for every request
                assert frontend == 0 if side == "a" else frontend > 0


def test_each_ratio_is_bs_figure_over_as(report):
    ratios = report["ratios"]["b/a"]
    for shape in SHAPES:
        a, b = report["sides"]["a"]["shapes"][shape], report["sides"]["b"]["shapes"][shape]
        for mode in ("non_stream", "stream"):
            for metric in ("tok_per_s", "req_per_s", "cpu_ms_per_req_serving", "latency_p50_ms"):
                expected = b[mode][metric] / a[mode][metric]
                assert ratios[shape][f"{mode}_{metric}"] == pytest.approx(expected, abs=2e-3)
        assert ratios[shape]["stream_cpu_ms_per_chunk_serving"] == pytest.approx(
            b["stream"]["cpu_ms_per_chunk_serving"] / a["stream"]["cpu_ms_per_chunk_serving"],
            abs=2e-3,
        )
