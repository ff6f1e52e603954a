"""The generated LeaderWorkerSet, run: one engine across two hosts from `tsvllm deploy k8s`.

A CPU model config with ``nnodes: 2`` becomes a ``leaderworkerset.yaml`` (validated by
``tsvllm validate``); this test reads the leader's and the worker's commands and environment
from it (:mod:`tests.e2e.lws`: the image's ENTRYPOINT + the pod's args, ``$(LWS_*)``
expanded) and runs them unchanged in two network namespaces joined by a veth pair, as two
pods. Only what a cluster would give differently is set here: the model folder (the
volume), the work directory, loopback-only serving addresses, and gloo's interface.

Needs root (``ip netns``); CI runs as root. Every process is ended by PID and both
namespaces are deleted in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import openai
import yaml

from tests.e2e.lws import Pod, pod
from tests.e2e.netns import Host, inside, pids_in, two_hosts
from tests.e2e.test_multinode import TOKENS, _complete
from tsvllm.config import dump_model_config, load_model_config
from tsvllm.contract import OPENAI_BASE
from tsvllm.deploy import DeployOptions, generate
from tsvllm.deploy.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]
STARTUP = 600
PORT = 8080  # each namespace has its own; the container's default


def _config(tmp: Path, model: Path, *, port: int) -> Path:
    """tiny-cpu.yaml as a two-node engine (tensor parallel 2, one rank per node)."""
    cfg = load_model_config(REPO / "model_configs" / "tiny-cpu.yaml")
    engine = {
        **cfg.handler.vllm_engine_config,
        "tensor_parallel_size": 2,
        "nnodes": 2,
        "master_addr": "10.0.0.1",  # bare hosts' address; a pod gets $(LWS_LEADER_ADDRESS)
        "master_port": port,
    }
    handler = cfg.handler.model_copy(
        update={"model_path": str(model), "vllm_engine_config": engine}
    )
    cfg = cfg.model_copy(update={"handler": handler, "startupTimeout": 300})
    return dump_model_config(cfg, tmp / "mn.yaml")


def _here(h: Host, *, model: Path, work: Path) -> dict[str, str]:
    """What this machine has instead of a cluster (the rest is the pod's own)."""
    return {
        "MODEL_PATH": str(model),  # the weights volume
        "TSVLLM_WORKDIR": str(work),
        "HF_HOME": str(work / "hf"),
        "TSVLLM_BIND": "127.0.0.1",  # tests never listen beyond loopback
        "TSVLLM_METRICS_BIND": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": h.ifname,  # a pod has one interface; a netns here has lo too
    }


def _start(p: Pod, h: Host, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", h.netns, *p.argv],
            env={**os.environ, **p.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )


def _wait_ready(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline and proc.poll() is None:
        if "tsvllm-entrypoint: ready." in log.read_text(errors="replace"):
            return
        time.sleep(1)
    raise AssertionError(f"the leader pod is not ready:\n{log.read_text(errors='replace')}")


def _end(proc: subprocess.Popen | None, *, term_first: bool = False) -> int | None:
    """End a pod's process group (ours: its leader is the PID we started); its exit code."""
    if proc is None:
        return None
    if term_first and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # as the kubelet does: the entrypoint drains
        try:
            return proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=30)


def test_multinode_leader_worker_set_commands_serve_across_two_hosts(tmp_path, tiny_model):
    tag = f"{os.getpid() % 100000}l"
    subnet = (os.getpid() + 101) % 250 + 1
    out = tmp_path / "k8s"
    config = _config(tmp_path, tiny_model, port=29500 + subnet)
    generate("k8s", config, out=out, options=DeployOptions(name="mn", weights="local"))
    assert validate_dir(out) == []
    lws = yaml.safe_load((out / "leaderworkerset.yaml").read_text())
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2

    with two_hosts(tag, subnet) as (a, b):
        leader_pod = pod(
            lws,
            "leaderTemplate",
            index=0,
            leader_address=a.addr,
            pod_ip=a.addr,
            env_here=_here(a, model=tiny_model, work=tmp_path / "a"),
        )
        worker_pod = pod(
            lws,
            "workerTemplate",
            index=1,
            leader_address=a.addr,
            pod_ip=b.addr,
            env_here=_here(b, model=tiny_model, work=tmp_path / "b"),
        )
        print(f"\nmultinode lws: leader {leader_pod.argv[1:]}\nworker {worker_pod.argv[1:]}")
        leader = worker = worker_code = None
        try:
            t0 = time.monotonic()
            worker = _start(worker_pod, b, tmp_path / "worker.log")
            leader = _start(leader_pod, a, tmp_path / "leader.log")
            _wait_ready(leader, tmp_path / "leader.log")
            print(f"multinode lws: two pods ready in {time.monotonic() - t0:.1f}s")
            written = load_model_config(tmp_path / "b" / "model-config.yaml")
            assert written.handler.nnodes == 2
            assert written.handler.vllm_engine_config["master_addr"] == a.addr
            keys = json.loads((tmp_path / "a" / "ts" / "key_file.json").read_text())
            with inside(a.netns):
                client = openai.OpenAI(
                    base_url=f"http://127.0.0.1:{PORT}{OPENAI_BASE}",
                    api_key=keys["inference"]["key"],
                    max_retries=0,
                    timeout=120,
                )
                for _ in range(2):  # the first warms up; the second is timed
                    tokens, took = _complete(client)
                    assert tokens == TOKENS
            print(f"multinode lws: {TOKENS} tokens in {took:.2f}s = {TOKENS / took:.1f} tok/s")
            probe = subprocess.run(
                ["ip", "netns", "exec", a.netns, *leader_pod.argv, "--probe", "ready"],
                env={**os.environ, **leader_pod.env},
                timeout=60,
                check=False,
            )
            assert probe.returncode == 0  # the readiness probe the pod spec runs
            code = _end(leader, term_first=True)
            leader = None
            assert code == 0, (tmp_path / "leader.log").read_text(errors="replace")[-3000:]
            t2 = time.monotonic()
            try:
                worker_code = worker.wait(timeout=60)  # it ends itself (LeaderWatch)
                print(
                    f"multinode lws: the worker pod ended itself {time.monotonic() - t2:.1f}s "
                    f"after its leader exited (exit {worker_code})"
                )
            except subprocess.TimeoutExpired:
                print("multinode lws: the worker pod outlived its leader by 60s; ended by PID")
        finally:
            _end(leader)
            _end(worker)
            left = []
            for h in (a, b):
                deadline = time.monotonic() + 60
                while pids_in(h.netns) and time.monotonic() < deadline:
                    time.sleep(1)
                left += pids_in(h.netns)
        assert left == []
        assert worker_code == 1  # "the leader went away": Kubernetes restarts the group
