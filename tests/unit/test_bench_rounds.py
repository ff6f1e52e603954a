"""``tsvllm bench serve``'s orchestration, with servers and load faked: warm-up rounds are
run and not counted, rounds alternate the side order, and every side is stopped, also
when a load fails or the run is interrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tsvllm.bench import serve

CONFIG = Path(__file__).parents[2] / "model_configs" / "tiny-cpu.yaml"


class Fake:
    def __init__(self, monkeypatch, *, fail_at: int | None = None, exc=RuntimeError):
        self.loads: list[str] = []
        self.stopped: list[str] = []
        self.fail_at, self.exc = fail_at, exc
        monkeypatch.setattr(serve, "_start_vllm", lambda argv, **kw: self.side("a"))
        monkeypatch.setattr(serve, "_start_torchserve", lambda name, cfg, **kw: self.side(name))
        monkeypatch.setattr(serve, "first_token_s", lambda *a, **kw: 1.0)
        monkeypatch.setattr(serve, "load", self.load)

    def side(self, name: str) -> serve._Side:
        proc = type("Proc", (), {"pid": os.getpid()})()
        return serve._Side(name, f"http://{name}", proc, lambda: self.stopped.append(name))

    def load(self, url: str, model: str, *, stream: bool, **kw) -> dict:
        if self.fail_at is not None and len(self.loads) == self.fail_at:
            raise self.exc("load failed")
        self.loads.append(url.removeprefix("http://"))
        n = len(self.loads)  # each load's own number: what a median is taken of
        return {
            "tok_per_s": float(n),
            "req_per_s": 1.0,
            "latency_p50_ms": 1.0,
            "latency_p99_ms": 1.0,
            "errors": 0,
        }


def bench(tmp_path, **kw):
    return serve.run(
        model_dir=tmp_path,
        config=CONFIG,
        workdir=tmp_path / "w",
        shapes=["8x2x4"],
        sides=["a", "b"],
        progress=lambda _: None,
        **kw,
    )


def test_warm_up_rounds_run_first_and_are_not_counted(monkeypatch, tmp_path):
    fake = Fake(monkeypatch)
    report = bench(tmp_path, rounds=2, warmup=1)
    # warm-up (reversed order), round 1 (a first), round 2 (b first); non-stream then stream
    assert fake.loads == ["b", "a", "b", "a", "a", "b", "a", "b", "b", "a", "b", "a"]
    a = report["sides"]["a"]["shapes"]["8x2x4"]
    assert a["non_stream"]["rounds_tok_per_s"] == [5.0, 10.0]  # loads 1-4 were the warm-up
    assert report["load"]["warmup_rounds"] == 1
    assert sorted(fake.stopped) == ["a", "b"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_every_side_is_stopped_when_a_load_fails(monkeypatch, tmp_path, exc):
    fake = Fake(monkeypatch, fail_at=3, exc=exc)
    with pytest.raises(exc):
        bench(tmp_path, rounds=3, warmup=0)
    assert sorted(fake.stopped) == ["a", "b"]
