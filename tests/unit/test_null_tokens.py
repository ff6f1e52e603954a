"""The null engine's bookkeeping (tsvllm.engine.null_tokens): which scheduled requests sample a
token in a step, which token, and the pace of steps; how ``--engine null`` reaches every
side's engine args, and ``--ts-workers`` the TorchServe sides' workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.bench import serve
from tsvllm.engine.null_tokens import EXECUTOR, TOKENS_PER_S_ENV, NullTokens, Pace

CONFIG = Path(__file__).parents[2] / "model_configs" / "tiny-cpu.yaml"


def test_a_prompt_in_chunks_samples_once_its_last_chunk_is_computed_then_every_step():
    tokens = NullTokens(token_ids=[7, 8, 9])
    step = tokens.step
    # a 10-token prompt in chunks of 6 and 4, beside a 2-token prompt done at once
    assert step(
        new_prompts={"a": 10, "b": 2},
        computed={"a": 0, "b": 0},
        scheduled={"a": 6, "b": 2},
        finished=(),
    ) == {"a": [], "b": [7]}
    assert step(
        new_prompts={}, computed={"a": 6, "b": 2}, scheduled={"a": 4, "b": 1}, finished=()
    ) == {"a": [7], "b": [8]}
    # decode steps walk the cycle and wrap
    assert step(
        new_prompts={}, computed={"a": 10, "b": 3}, scheduled={"a": 1, "b": 1}, finished=()
    ) == {"a": [8], "b": [9]}
    assert step(new_prompts={}, computed={"b": 4}, scheduled={"b": 1}, finished=()) == {"b": [7]}
    assert tokens.expected_ids(5) == [7, 8, 9, 7, 8]


def test_finished_requests_are_dropped_and_a_reused_id_starts_over():
    tokens = NullTokens(token_ids=[1, 2])
    tokens.step(new_prompts={"r": 3}, computed={"r": 0}, scheduled={"r": 3}, finished=())
    assert tokens.running == 1
    assert tokens.step(
        new_prompts={"r": 1}, computed={"r": 0}, scheduled={"r": 1}, finished={"r"}
    ) == {"r": [1]}
    assert tokens.step(new_prompts={}, computed={}, scheduled={}, finished={"r"}) == {}
    assert tokens.running == 0


def test_a_preempted_request_resumes_its_sequence_after_recomputing():
    tokens = NullTokens(token_ids=[1, 2, 3])
    tokens.step(new_prompts={"r": 4}, computed={"r": 0}, scheduled={"r": 4}, finished=())
    tokens.step(new_prompts={}, computed={"r": 4}, scheduled={"r": 1}, finished=())
    # preempted: recomputes prompt + 2 sampled tokens from 0, in two chunks
    assert tokens.step(new_prompts={}, computed={"r": 0}, scheduled={"r": 3}, finished=()) == {
        "r": []
    }
    assert tokens.step(new_prompts={}, computed={"r": 3}, scheduled={"r": 3}, finished=()) == {
        "r": [3]
    }


def test_no_token_ids_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        NullTokens(token_ids=[])


class Clock:
    def __init__(self) -> None:
        self.now, self.slept = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_pace_spaces_steps_and_never_waits_for_time_already_spent():
    clock = Clock()
    pace = Pace(tokens_per_s=4, clock=clock, sleep=clock.sleep)
    pace.wait()  # the first step is due at once
    pace.wait()
    clock.now += 0.1  # a step that took 0.1 s of the 0.25
    pace.wait()
    clock.now += 1.0  # a slow step: the next one is due at once
    pace.wait()
    assert clock.slept == [0.25, 0.15]


def test_pace_zero_never_sleeps_and_a_negative_rate_is_an_error():
    clock = Clock()
    pace = Pace(tokens_per_s=0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        pace.wait()
    assert clock.slept == []
    with pytest.raises(ValueError, match="0 \\(no wait\\) or more"):
        Pace(tokens_per_s=-1)


def test_engine_null_adds_the_executor_and_its_rate_for_every_side(tmp_path):
    cfg, served = serve.bench_config(
        CONFIG, model_dir=tmp_path, engine="null", null_tokens_per_s=50
    )
    assert served == "tiny"
    assert cfg.handler.vllm_engine_config["distributed_executor_backend"] == EXECUTOR
    assert cfg.handler.vllm_engine_config["max_model_len"] == 2048  # the config's own args kept
    assert float(cfg.handler.env[TOKENS_PER_S_ENV]) == 50
    model, _ = serve.bench_config(CONFIG, model_dir=tmp_path)
    assert "distributed_executor_backend" not in model.handler.vllm_engine_config


@pytest.mark.parametrize(
    ("engine", "rate", "message"),
    [
        ("model", 10, "add --engine null"),
        ("null", -1, "use 0 \\(no wait\\) or more"),
        ("fast", 0, "choose from model, null"),
    ],
)
def test_bad_engine_options_are_errors_that_name_the_fix(tmp_path, engine, rate, message):
    with pytest.raises(ValueError, match=message):
        serve.bench_config(CONFIG, model_dir=tmp_path, engine=engine, null_tokens_per_s=rate)


def test_ts_workers_sets_the_torchserve_sides_workers_and_must_be_positive(tmp_path):
    cfg, _ = serve.bench_config(CONFIG, model_dir=tmp_path, engine="null", ts_workers=4)
    assert (cfg.minWorkers, cfg.maxWorkers) == (4, 4)
    default, _ = serve.bench_config(CONFIG, model_dir=tmp_path)
    assert (default.minWorkers, default.maxWorkers) == (1, 1)  # the config's own
    with pytest.raises(ValueError, match="--ts-workers 0: use 1 or more"):
        serve.bench_config(CONFIG, model_dir=tmp_path, ts_workers=0)
