"""Deployment assets follow the drain: grace period, preStop, readiness, the timeout's env.

``tsvllm validate`` rejects a Kubernetes grace period shorter than preStop + drain + stop
with a message naming the fix; the generated assets pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy import READINESS, REPO, assets, broken_copy, load
from tsvllm.deploy import DeployError, generate
from tsvllm.deploy.common import grace_period_s
from tsvllm.deploy.validate import validate_dir
from tsvllm.host import shutdown

CONTAINER = ("spec", "template", "spec", "containers", 0)

# docs/DEPLOY.md ("Kubernetes"): terminationGracePeriodSeconds = preStop 5 + drain + 10 (abort
# wait) + 15 (a bound on the stop) = 60 s with the default drain of 30 s
PRESTOP_S, ABORT_WAIT_S, STOP_S, DEFAULT_DRAIN_S = 5, 10, 15, 30
DEFAULT_GRACE_S = 60


def pod_of(out: Path) -> dict:
    return load(out / "deployment.yaml")["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_k8s_pod_drains_before_it_is_killed(tmp_path):
    out = assets(tmp_path, "k8s")
    pod = pod_of(out)
    c = pod["containers"][0]
    assert env_of(c)["TSVLLM_DRAIN_TIMEOUT_S"] == str(DEFAULT_DRAIN_S)
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_S)]
    assert pod["terminationGracePeriodSeconds"] == DEFAULT_GRACE_S
    # readiness is the handler's v1/models (503 while draining), through the exec probe
    assert c["readinessProbe"]["exec"]["command"][-2:] == ["--probe", "ready"]
    assert validate_dir(out) == []
    readme = (out / "README.md").read_text()
    assert "preStop" in readme and "TSVLLM_DRAIN_TIMEOUT_S" in readme and "60 s" in readme


def test_k8s_http_readiness_is_the_route_that_answers_503_while_draining(tmp_path):
    c = pod_of(assets(tmp_path, "k8s", disable_token_auth=True))["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == READINESS


def test_the_exec_readiness_probe_fails_on_a_draining_worker(monkeypatch, tmp_path):
    from tsvllm.host import entrypoint
    from tsvllm.host.torchserve import TorchServe

    body = '{"error": {"code": "server_draining", "message": "draining"}}'
    monkeypatch.setattr(TorchServe, "_get", lambda self, url, key: (503, body))
    env = {"TSVLLM_WORKDIR": str(tmp_path), "TSVLLM_DISABLE_TOKEN_AUTH": "1"}
    assert entrypoint.probe("ready", env) == 1
    monkeypatch.setattr(TorchServe, "_get", lambda self, url, key: (200, "{}"))
    assert entrypoint.probe("ready", env) == 0


def _config_with_env(tmp_path: Path, **env: str) -> Path:
    data = yaml.safe_load((REPO / "model_configs" / "llama-3.1-70b-instruct-tp4.yaml").read_text())
    data["handler"].setdefault("env", {}).update(env)
    path = tmp_path / "long-drain.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_longer_drain_in_handler_env_lengthens_the_grace_period(tmp_path):
    config = _config_with_env(tmp_path, TSVLLM_DRAIN_TIMEOUT_S="300")
    generate("k8s", config, out=tmp_path / "k8s")
    pod = pod_of(tmp_path / "k8s")
    assert env_of(pod["containers"][0])["TSVLLM_DRAIN_TIMEOUT_S"] == "300"
    assert pod["terminationGracePeriodSeconds"] == PRESTOP_S + 300 + ABORT_WAIT_S + STOP_S
    assert validate_dir(tmp_path / "k8s") == []
    for platform in ("azureml", "vertex"):
        generate(platform, config, out=tmp_path / platform)
        assert (
            "up to 300 s (TSVLLM_DRAIN_TIMEOUT_S)"
            in (tmp_path / platform / "README.md").read_text()
        )
        assert validate_dir(tmp_path / platform) == []


def test_a_bad_drain_timeout_in_handler_env_is_a_deploy_error(tmp_path):
    config = _config_with_env(tmp_path, TSVLLM_DRAIN_TIMEOUT_S="forever")
    with pytest.raises(DeployError, match=r"handler.env: TSVLLM_DRAIN_TIMEOUT_S='forever'"):
        generate("k8s", config, out=tmp_path / "k8s")


@pytest.fixture(scope="module")
def pristine_k8s(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "k8s"
    generate("k8s", REPO / "model_configs" / "llama-3.1-70b-instruct-tp4.yaml", out=out)
    assert validate_dir(out) == []
    return out


def _grace_problems(out: Path) -> list[str]:
    return [str(p) for p in validate_dir(out) if "terminationGracePeriodSeconds" in str(p)]


def test_a_grace_period_shorter_than_the_drain_is_rejected_naming_the_fix(pristine_k8s, tmp_path):
    def mutate(data: dict) -> None:
        data["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20

    problems = _grace_problems(broken_copy(pristine_k8s, tmp_path, "deployment.yaml", mutate))
    assert len(problems) == 1, problems
    assert "spec.template.spec.terminationGracePeriodSeconds: 20 s does not cover" in problems[0]
    assert "preStop sleep (5 s)" in problems[0] and "TSVLLM_DRAIN_TIMEOUT_S=30 s" in problems[0]
    assert "set terminationGracePeriodSeconds to at least 60" in problems[0]


def test_raising_the_drain_alone_is_rejected_too(pristine_k8s, tmp_path):
    def mutate(data: dict) -> None:
        c = data["spec"]["template"]["spec"]["containers"][0]
        for e in c["env"]:
            if e["name"] == "TSVLLM_DRAIN_TIMEOUT_S":
                e["value"] = "120"

    problems = _grace_problems(broken_copy(pristine_k8s, tmp_path, "deployment.yaml", mutate))
    assert problems and "at least 150" in problems[0], problems


def test_a_missing_grace_period_means_kubernetes_30_s_and_is_rejected(pristine_k8s, tmp_path):
    def mutate(data: dict) -> None:
        del data["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    problems = _grace_problems(broken_copy(pristine_k8s, tmp_path, "deployment.yaml", mutate))
    assert problems and "30 s does not cover" in problems[0], problems


def test_without_prestop_the_grace_needs_less_and_the_sleep_action_counts(pristine_k8s, tmp_path):
    def no_hook(data: dict) -> None:
        spec = data["spec"]["template"]["spec"]
        del spec["containers"][0]["lifecycle"]
        spec["terminationGracePeriodSeconds"] = 55

    assert (
        _grace_problems(broken_copy(pristine_k8s, tmp_path / "a", "deployment.yaml", no_hook)) == []
    )

    def sleep_action(data: dict) -> None:
        spec = data["spec"]["template"]["spec"]
        spec["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 20}}}

    problems = _grace_problems(
        broken_copy(pristine_k8s, tmp_path / "b", "deployment.yaml", sleep_action)
    )
    assert problems and "preStop sleep (20 s)" in problems[0] and "at least 75" in problems[0]


def test_an_invalid_drain_timeout_in_the_container_is_rejected(pristine_k8s, tmp_path):
    def mutate(data: dict) -> None:
        for e in data["spec"]["template"]["spec"]["containers"][0]["env"]:
            if e["name"] == "TSVLLM_DRAIN_TIMEOUT_S":
                e["value"] = "-5"

    problems = [
        str(p) for p in validate_dir(broken_copy(pristine_k8s, tmp_path, "deployment.yaml", mutate))
    ]
    assert any("containers[0].env: TSVLLM_DRAIN_TIMEOUT_S='-5'" in p for p in problems), problems


def test_the_leader_worker_set_leader_is_checked_too(tmp_path):
    out = assets(tmp_path, "k8s", "llama-3.1-405b-instruct-fp8-tp8", gpus_per_node=4)
    assert validate_dir(out) == []

    def mutate(data: dict) -> None:
        data["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"][
            "terminationGracePeriodSeconds"
        ] = 10

    problems = _grace_problems(broken_copy(out, tmp_path, "leaderworkerset.yaml", mutate))
    assert problems and "leaderTemplate.spec.terminationGracePeriodSeconds" in problems[0]


def test_azure_and_vertex_carry_the_drain_timeout_and_say_what_an_update_does(tmp_path):
    azure = assets(tmp_path, "azureml")
    env = load(azure / "deployment.yml")["environment_variables"]
    assert env["TSVLLM_DRAIN_TIMEOUT_S"] == "30"
    readme = (azure / "README.md").read_text()
    assert '--traffic "blue=0 green=100"' in readme and "Not verified" in readme
    vertex = assets(tmp_path, "vertex")
    spec = load(vertex / "model.json")
    assert {"name": "TSVLLM_DRAIN_TIMEOUT_S", "value": "30"} in spec["containerSpec"]["env"]
    readme = (vertex / "README.md").read_text()
    assert "--traffic-split=0=100" in readme and "Not verified" in readme


def test_the_grace_period_and_the_shutdown_bound_are_the_documented_sums():
    assert grace_period_s(DEFAULT_DRAIN_S) == DEFAULT_GRACE_S
    assert shutdown.shutdown_bound(DEFAULT_DRAIN_S) == DEFAULT_DRAIN_S + ABORT_WAIT_S + STOP_S
    assert grace_period_s(300) == PRESTOP_S + 300 + ABORT_WAIT_S + STOP_S
