"""``tsvllm worker-node``: a follower host of an engine that spans several nodes.

The leader is the usual TorchServe + VLLMHandler host; its model config's
``handler.vllm_engine_config`` has ``nnodes``, ``master_addr``, ``master_port`` and the
parallel sizes. Every other host runs vLLM's headless workers from the *same* config::

    tsvllm worker-node --config model-config.yaml --node-rank 1 [--master-addr 10.0.0.1]

The follower's engine args are the leader's (:func:`tsvllm.engine.vllm_engine.handler_argv`)
with only the node rank (and, if given, the master address) replaced and ``--headless``
added, so the two cannot disagree on the model, the parallel sizes or the engine settings.
A follower ends itself (exit 1) once its leader's engine is gone
(:mod:`tsvllm.host.leader_watch`): started again, it joins the leader's next engine.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from tsvllm.config import ConfigError, ModelConfig, load_model_config
from tsvllm.host.leader_watch import LeaderWatch

logger = logging.getLogger(__name__)


def follower_argv(
    cfg: ModelConfig,
    *,
    node_rank: int,
    master_addr: str | None = None,
    resolve: Callable[[str], str] = str,
) -> list[str]:
    """The engine args of follower ``node_rank``: the leader's, rank replaced, headless."""
    from tsvllm.engine.vllm_engine import handler_argv

    nnodes = cfg.handler.nnodes
    if nnodes < 2:
        raise ConfigError(
            "handler.vllm_engine_config",
            [
                "nnodes is not set (or 1): the config describes a one-host engine; set nnodes: 2 "
                "(or more) and master_addr to run worker nodes"
            ],
        )
    if not 1 <= node_rank < nnodes:
        raise ConfigError(
            "--node-rank",
            [
                f"node rank {node_rank} is outside 1..{nnodes - 1} (nnodes {nnodes}; the leader "
                "is rank 0); pass --node-rank 1 .. nnodes-1"
            ],
        )
    engine = dict(cfg.handler.vllm_engine_config)
    engine["node_rank"] = node_rank
    if master_addr:
        engine["master_addr"] = master_addr
    engine["headless"] = True
    handler = cfg.handler.model_copy(update={"vllm_engine_config": engine})
    return handler_argv(handler, resolve=resolve)


def follower_command(
    config: str, *, node_rank: str | int, master_addr: str | None = None
) -> list[str]:
    """The command line that starts a follower host (tests and deployments share it)."""
    cmd = ["tsvllm", "worker-node", "--config", config, "--node-rank", str(node_rank)]
    if master_addr:
        cmd += ["--master-addr", master_addr]
    return cmd


def run(config: str, *, node_rank: int, master_addr: str | None = None) -> int:
    """Start the headless follower for ``config``; returns when its workers stop (0), or
    when its leader went away (1: :mod:`tsvllm.host.leader_watch`). Nothing it started is
    left running."""
    from tsvllm.engine.vllm_engine import DEFAULT_MASTER_PORT, engine_environ, run_headless_node

    path = Path(config)
    cfg = load_model_config(path)
    for warning in cfg.warnings():
        logger.warning("tsvllm worker-node: %s", warning)

    def beside(p: str) -> str:  # a relative path is read next to the config, as the leader
        found = path.parent / p  # reads it from the archive's model_dir
        return str(found) if not Path(p).is_absolute() and found.exists() else p

    argv = follower_argv(cfg, node_rank=node_rank, master_addr=master_addr, resolve=beside)
    os.environ.update(cfg.handler.env)
    os.environ.update(engine_environ(cfg.handler, environ=os.environ))
    logger.info(
        "tsvllm worker-node: node %d of %d, vLLM args %s",
        node_rank,
        cfg.handler.nnodes,
        " ".join(argv),
    )
    engine = cfg.handler.vllm_engine_config
    watch = LeaderWatch(
        master_addr or engine["master_addr"],
        int(engine.get("master_port", DEFAULT_MASTER_PORT)),
        on_gone=lambda: os.kill(os.getpid(), signal.SIGTERM),  # vLLM's handler: SystemExit
    )
    watch.start()
    try:
        run_headless_node(argv)
    except SystemExit:
        if not watch.gone:
            raise
    finally:
        watch.stop()
        _end_children()
    return 1 if watch.gone else 0


def _end_children(grace_s: float = 10.0) -> None:
    """End this process's children (vLLM's workers) that outlive the headless node."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``tsvllm worker-node`` (the container entrypoint's ``worker-node`` mode has the same
    flags: :mod:`tsvllm.host.entrypoint`)"""
    p = sub.add_parser(
        "worker-node",
        help="run a follower host of a multi-node engine (vLLM's headless workers)",
        description=(
            "Join the engine of a leader whose model config has handler.vllm_engine_config."
            "nnodes >= 2: same config, this host's node rank."
        ),
    )
    p.add_argument("--config", required=True, help="the leader's model-config.yaml")
    p.add_argument("--node-rank", type=int, default=1, help="this host's rank, 1..nnodes-1")
    p.add_argument(
        "--master-addr", help="the leader's address (default: master_addr from the config)"
    )
    p.set_defaults(func=_command)
    return p


def _command(args: argparse.Namespace) -> int:
    """``tsvllm worker-node``. When the leader went away, this node's vLLM processes are
    ended by then, and the process exits at once (``os._exit``): a normal interpreter exit
    waited for vLLM's leftover threads (measured under load: more than 45 s after its
    workers were killed), and a supervisor restarting the node should not wait for that."""
    code = run(args.config, node_rank=args.node_rank, master_addr=args.master_addr)
    if code == 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return code
