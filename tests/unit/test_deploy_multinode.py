"""One engine over several pods: the LeaderWorkerSet `tsvllm deploy k8s` writes, the checks
`tsvllm validate` makes on it, and the container entrypoint's two roles. Offline and fast;
the group runs for real in tests/e2e/test_container_lws.py, from the same commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.e2e.lws import MASTER_PORT, image_entrypoint, pod, two_node_config
from tests.unit.test_deploy import REPO, broken_copy, load
from tsvllm.config import dump_model_config, load_model_config
from tsvllm.deploy import DeployError, DeployOptions, generate
from tsvllm.deploy.common import target_for
from tsvllm.deploy.multinode import (
    LEADER_ADDRESS,
    POD_CONFIG,
    WORKER_INDEX,
    leader_args,
    node_count,
    worker_args,
)
from tsvllm.deploy.validate import validate_dir
from tsvllm.host import entrypoint as ep
from tsvllm.host.entrypoint import EntrypointError
from tsvllm.host.worker_node import follower_command

BIG = REPO / "model_configs" / "llama-3.1-405b-instruct-fp8-tp8.yaml"  # TP 8, gpu


def _lws(out: Path) -> dict:
    return load(out / "leaderworkerset.yaml")


def _containers(lws: dict) -> tuple[dict, dict]:
    lwt = lws["spec"]["leaderWorkerTemplate"]
    return tuple(lwt[r]["spec"]["containers"][0] for r in ("leaderTemplate", "workerTemplate"))


@pytest.fixture(scope="module")
def big_lws(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lws")
    generate("k8s", BIG, out=out, options=DeployOptions(gpus_per_node=4))
    assert validate_dir(out) == []
    return out


def test_gpus_beyond_a_node_make_a_group_on_vllms_own_runtime(big_lws):
    lws = _lws(big_lws)
    assert not (big_lws / "deployment.yaml").exists()
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    leader, worker = _containers(lws)
    assert leader["args"] == ["--master-addr", LEADER_ADDRESS] == leader_args()
    assert worker["args"] == worker_args()
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"  # TP 8 over 2 nodes
        env = {e["name"]: e for e in c["env"]}
        assert env["VLLM_HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        args = env["VLLM_ARGS"]["value"]
        assert "--nnodes 2" in args
        assert "--master-addr" not in args and "ray" not in args  # the leader's flag has it
    same = {k: v for k, v in ((e["name"], e.get("value")) for e in leader["env"])}
    assert same == {e["name"]: e.get("value") for e in worker["env"]}  # one engine, one env
    assert "command" not in leader and "command" not in worker  # the image's ENTRYPOINT runs
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    assert load(big_lws / "service.yaml")["spec"]["selector"]["role"] == "leader"
    assert "ReadWriteMany" in load(big_lws / "pvc.yaml")["spec"]["accessModes"]


def test_the_worker_pods_command_is_tsvllm_worker_node(big_lws):
    """The flags come from the function the bare-host test's follower uses, and the
    pod runs them through the image's entrypoint, which the e2e test runs the same way."""
    flags = follower_command(POD_CONFIG, node_rank=WORKER_INDEX, master_addr=LEADER_ADDRESS)
    assert flags[:2] == ["tsvllm", "worker-node"]
    assert worker_args() == flags[1:]
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        assert image_entrypoint(REPO / "docker" / dockerfile) == [
            "tini",
            "--",
            "python3",
            "-m",
            "tsvllm.host.entrypoint",
        ]
    here = {"TSVLLM_WORKDIR": "/w"}
    lws = _lws(big_lws)
    worker = pod(lws, "workerTemplate", index=3, leader_address="l.svc", pod_ip="1.2.3.4")
    assert (
        worker.args
        == follower_command("/tmp/tsvllm/model-config.yaml", node_rank=3, master_addr="l.svc")[1:]
    )
    assert worker.env["VLLM_HOST_IP"] == "1.2.3.4"
    assert worker.flags[:3] == [
        "--user=10001:10001",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    assert re.fullmatch(r"--shm-size=\d+m", worker.flags[3])
    moved = pod(lws, "workerTemplate", index=1, leader_address="l", pod_ip="i", env_here=here)
    assert moved.args[moved.args.index("--config") + 1] == "/w/model-config.yaml"
    args = ep._parser().parse_args(worker.args)
    assert (args.mode, args.node_rank, args.master_addr) == ("worker-node", 3, "l.svc")
    leader = pod(lws, "leaderTemplate", index=0, leader_address="l.svc", pod_ip="1.2.3.5")
    args = ep._parser().parse_args(leader.args)
    assert (args.mode, args.master_addr) == (None, "l.svc")


def test_a_cpu_config_with_nnodes_is_a_group_without_gpus(tmp_path):
    config = two_node_config(tmp_path)
    out = tmp_path / "k8s"
    generate("k8s", config, out=out)
    assert validate_dir(out) == []
    leader, worker = _containers(_lws(out))
    assert "nvidia.com/gpu" not in leader["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["TENSOR_PARALLEL_SIZE"] == "2" and env["TSVLLM_DEVICE"] == "cpu"
    assert "--nnodes 2" in env["VLLM_ARGS"] and f"--master-port {MASTER_PORT}" in env["VLLM_ARGS"]
    assert "10.0.0.1" not in (out / "leaderworkerset.yaml").read_text()
    assert "worker-node --node-rank $(LWS_WORKER_INDEX)" in (out / "README.md").read_text()
    for platform in ("azureml", "vertex"):
        with pytest.raises(DeployError, match="nnodes 2: .*needs Kubernetes"):
            generate(platform, config, out=tmp_path / platform)


@pytest.mark.parametrize(("gpus_per_node", "nodes"), [(8, 1), (4, 2), (3, 4), (2, 4), (1, 8)])
def test_node_count_splits_tp_x_pp_evenly(gpus_per_node, nodes):
    target = target_for(load_model_config(BIG), source=str(BIG), options=DeployOptions())
    assert node_count(target, gpus_per_node=gpus_per_node) == nodes


def test_nnodes_whose_share_does_not_fit_a_node_is_refused(tmp_path):
    cfg = load_model_config(BIG)
    engine = {**cfg.handler.vllm_engine_config, "nnodes": 2, "master_addr": "10.0.0.1"}
    handler = cfg.handler.model_copy(update={"vllm_engine_config": engine})
    cfg = cfg.model_copy(update={"handler": handler, "parallelLevel": 4})
    config = dump_model_config(cfg, tmp_path / "big.yaml")
    with pytest.raises(DeployError, match="4 GPUs per node .* nodes of 2 GPUs"):
        generate("k8s", config, out=tmp_path / "k", options=DeployOptions(gpus_per_node=2))


def _env(name: str, value: str):
    def mutate(data, role):
        c = data["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
        next(e for e in c["env"] if e["name"] == name)["value"] = value

    return mutate


def _field(*path, value):
    def mutate(data, role):
        node = data["spec"]["leaderWorkerTemplate"]
        if role:
            node = node[role]["spec"]["containers"][0]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


GROUP_FAULTS = [
    (_field("size", value=3), [None], "spec.leaderWorkerTemplate.size", "set size: 2"),
    (
        _env("VLLM_ARGS", "--max-model-len 4096 --nnodes 2"),
        ["workerTemplate"],
        "workerTemplate.spec.containers[0].env.VLLM_ARGS",
        "give every pod the same value",
    ),
    (
        _env("TENSOR_PARALLEL_SIZE", "3"),
        ["leaderTemplate", "workerTemplate"],
        "env.TENSOR_PARALLEL_SIZE",
        "does not split over --nnodes 2",
    ),
    (
        _field("resources", "limits", "nvidia.com/gpu", value="8"),
        ["workerTemplate"],
        "workerTemplate.spec.containers[0].resources.limits.nvidia.com/gpu",
        "set 4",
    ),
    (
        _field("args", 4, value="1"),
        ["workerTemplate"],
        "workerTemplate.spec.containers[0].args",
        "$(LWS_WORKER_INDEX)",
    ),
    (
        _field("args", value=[]),
        ["leaderTemplate"],
        "leaderTemplate.spec.containers[0].args",
        "--master-addr",
    ),
]


@pytest.mark.parametrize(("mutate", "roles", "field", "fix"), GROUP_FAULTS)
def test_each_group_fault_fails_naming_the_field_and_the_fix(
    big_lws, tmp_path, mutate, roles, field, fix
):
    def apply(data):
        for role in roles:
            mutate(data, role)
            if "nvidia.com/gpu" in field and role:  # request = limit, or that fails first
                c = data["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
                c["resources"]["requests"]["nvidia.com/gpu"] = "8"

    problems = [
        str(p) for p in validate_dir(broken_copy(big_lws, tmp_path, "leaderworkerset.yaml", apply))
    ]
    assert any(field in p and fix in p for p in problems), problems


# -- the entrypoint's two roles ---------------------------------------------------------

CPU_GROUP = {
    "TSVLLM_DEVICE": "cpu",
    "TENSOR_PARALLEL_SIZE": "2",
    "VLLM_ARGS": "--max-model-len 512 --nnodes 2 --master-port 29555",
}


def test_the_leaders_config_has_the_group_and_the_leaders_address():
    cfg = ep.model_config(CPU_GROUP, model="/models/tiny", master_addr="mn-0.mn")
    engine = cfg.handler.vllm_engine_config
    assert (engine["nnodes"], engine["master_addr"], engine["master_port"]) == (2, "mn-0.mn", 29555)
    assert cfg.handler.tensor_parallel_size == 2 and cfg.deviceType == "cpu"
    with pytest.raises(ValueError, match="nnodes 2 needs the leader's address"):
        ep.model_config(CPU_GROUP, model="/models/tiny")


def test_a_gpu_node_holds_its_share_of_the_engine():
    env = {"TSVLLM_DEVICE": "gpu", "TENSOR_PARALLEL_SIZE": "8", "VLLM_ARGS": "--nnodes 2"}
    cfg = ep.model_config(env, model="org/m", gpus=4, master_addr="l")
    assert (cfg.parallelType, cfg.parallelLevel) == ("custom", 4)
    assert cfg.handler.parallel_per_node == 4


def test_worker_node_mode_writes_the_config_then_runs_the_follower(tmp_path, monkeypatch, capsys):
    from tsvllm.host import worker_node

    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ran = {}

    def fake_run(config, *, node_rank, master_addr):
        ran.update(config=config, node_rank=node_rank, master_addr=master_addr)
        ran["cfg"] = load_model_config(config)
        return 0

    monkeypatch.setattr(worker_node, "run", fake_run)
    env = {**CPU_GROUP, "MODEL_PATH": str(model), "TSVLLM_WORKDIR": str(tmp_path / "w")}
    config = tmp_path / "w" / "model-config.yaml"
    argv = ["worker-node", "--config", str(config), "--node-rank", "1", "--master-addr", "l"]
    assert ep.main(argv, env) == 0
    assert (ran["config"], ran["node_rank"], ran["master_addr"]) == (str(config), 1, "l")
    assert ran["cfg"].handler.nnodes == 2 and ran["cfg"].handler.model_path == str(model)
    # a bad environment or rank stops the worker pod with the reason, before vLLM starts
    assert ep.main(argv, {**env, "VLLM_ARGS": "--nnodes 2 --headless"}) == 2
    monkeypatch.undo()
    assert ep.main([*argv[:4], "2", *argv[5:]], env) == 2  # rank 2 of nnodes 2
    assert "node rank 2 is outside 1..1" in capsys.readouterr().err


def test_worker_node_mode_needs_a_reachable_leader_address(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env = {**CPU_GROUP, "MODEL_PATH": str(model), "TSVLLM_WORKDIR": str(tmp_path / "w")}
    code = ep.main(["worker-node", "--config", str(tmp_path / "c.yaml")], env)
    assert code == 2
    assert "master_addr" in capsys.readouterr().err
    with pytest.raises(EntrypointError, match="TENSOR_PARALLEL_SIZE='x'"):
        ep.model_config({**CPU_GROUP, "TENSOR_PARALLEL_SIZE": "x"}, model="/m", master_addr="l")


def test_generated_readme_and_yaml_agree_on_the_group(big_lws):
    text = (big_lws / "README.md").read_text()
    assert "One engine spans 2 pods" in text and "4 GPUs" in text
    assert yaml.safe_load((big_lws / "leaderworkerset.yaml").read_text())["kind"] == (
        "LeaderWorkerSet"
    )
