"""The generated LeaderWorkerSet, run as two containers: one engine across two pods.

A CPU model config with ``nnodes: 2`` becomes a ``leaderworkerset.yaml`` (validated by
``tsvllm validate``) naming the image this run built. The leader's and the worker's args,
environment, user, capabilities and shared memory are read from it (:mod:`tests.e2e.lws`,
``$(LWS_*)`` and ``status.podIP`` filled in as the LWS controller and the kubelet would)
and given to two containers of the image on a podman network the test makes: internal (no
way out), a subnet of its own, removed at the end. Only the weights volume is this
machine's. The test talks to the leader at its address on that network from inside the
leader's network namespace (the host has no address on an internal network).
"""

from __future__ import annotations

import openai
import pytest
import yaml

from tests.e2e.containers import Container, internal_network, podman
from tests.e2e.lws import pod, two_node_config
from tests.e2e.netns import inside
from tests.e2e.test_multinode import TOKENS, _complete
from tsvllm.contract import OPENAI_BASE
from tsvllm.deploy import DeployOptions, generate
from tsvllm.deploy.validate import validate_dir

#: a request with no answer within this long waited for an engine that is gone
HANG_S = 30


def test_a_leader_worker_set_serves_as_two_containers_and_stops_cleanly(
    image, tiny_model, tmp_path
):
    out = tmp_path / "k8s"
    options = DeployOptions(name="mn", weights="local", image=image)
    config = two_node_config(tmp_path, model=tiny_model, startup_timeout=300)
    generate("k8s", config, out=out, options=options)
    assert validate_dir(out) == []
    lws = yaml.safe_load((out / "leaderworkerset.yaml").read_text())
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):
        assert group[role]["spec"]["containers"][0]["image"] == image

    with internal_network() as net:
        leader_ip, worker_ip = net.address(2), net.address(3)
        pods = {
            "leader": pod(
                lws, "leaderTemplate", index=0, leader_address=leader_ip, pod_ip=leader_ip
            ),
            "worker": pod(
                lws, "workerTemplate", index=1, leader_address=leader_ip, pod_ip=worker_ip
            ),
        }
        print(f"\nlws containers: leader {pods['leader'].args}, worker {pods['worker'].args}")

        def start(role: str, address: str) -> Container:
            p = pods[role]
            volume = f"--volume={tiny_model}:{p.env['MODEL_PATH']}:ro"  # the weights volume
            flags = (*p.flags, volume, f"--network={net.name}", f"--ip={address}")
            return Container(image, env=p.env, flags=flags, address=address, command=tuple(p.args))

        worker = leader = None
        try:
            worker = start("worker", worker_ip)
            leader = start("leader", leader_ip)
            leader.wait_ready()
            key, inside_leader = leader.key(), leader.netns()
            client = openai.OpenAI(
                base_url=leader.url + OPENAI_BASE, api_key=key, max_retries=0, timeout=120
            )
            with inside(inside_leader):
                for _ in range(2):  # the first warms up; the second is timed
                    tokens, took = _complete(client)
                    assert tokens == TOKENS
            print(f"lws containers: {TOKENS} tokens in {took:.2f}s = {TOKENS / took:.1f} tok/s")
            # one engine over both pods: rank 1 runs in the worker's container
            assert any("VLLM::Worker" in line for line in worker.processes()), worker.processes()
            leader.exec("python3", "-m", "tsvllm.host.entrypoint", "--probe", "ready")  # exit 0

            # the worker pod stops (its node drained): it exits, and the leader's engine
            # with it: a request gets a 503 with an OpenAI body, not a wait
            podman("stop", "--time=60", worker.name, timeout=120)
            worker_code = worker.wait_exit(timeout=10)
            print(f"lws containers: the worker exited {worker_code}\n{worker.logs()[-1500:]}")
            assert worker_code == 0, worker.logs()[-3000:]
            with inside(inside_leader), pytest.raises(openai.APIStatusError) as err:
                _complete(client.with_options(timeout=HANG_S))
            print(f"lws containers: then {err.value.status_code} {err.value.message!r}")
            assert err.value.status_code == 503
            # ... and the leader stops cleanly: drained, exit 0, no process left
            podman("stop", "--time=60", leader.name, timeout=120)
            leader_code = leader.wait_exit(timeout=10)
            print(f"lws containers: the leader exited {leader_code}\n{leader.logs()[-1500:]}")
            assert leader_code == 0, leader.logs()[-3000:]
            assert leader.processes() == []
        finally:
            for container in (leader, worker):
                if container is not None:
                    container.remove()
