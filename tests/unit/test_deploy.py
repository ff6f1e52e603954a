"""Deployment assets: every shipped config validates on every platform; each fault fails.

The validators are the platforms' own (azure-ai-ml, kubernetes-validate, the
LeaderWorkerSet schema, google-cloud-aiplatform, hadolint) plus ours; they run offline.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsvllm.cli import main as cli
from tsvllm.deploy import DeployOptions, generate
from tsvllm.deploy.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "model_configs").glob("*.yaml"))
PLATFORMS = ("azureml", "k8s", "vertex")

# The values the platforms and our docs document, written out (never the constants under test):
# the container's routes, as docs/DEPLOY.md lists them ("Routes (model `vllm`, version `1.0`)")
LIVENESS = "/alive"
READINESS = "/predictions/vllm/1.0/v1/models"
VERTEX_PREDICT = "/predictions/vllm/1.0/vertex/predict"
# Azure ML managed online deployment YAML reference, request_settings.request_timeout_ms:
# "the maximum value allowed is 180000 milliseconds" (docs/DEPLOY.md repeats it)
AZURE_MAX_REQUEST_TIMEOUT_MS = 180_000
# Kubernetes API reference, io.k8s.api.core.v1.Probe: successThreshold "Defaults to 1. Must be
# 1 for liveness and startup"; timeoutSeconds "Defaults to 1 second"
K8S_PROBE_DEFAULT_SUCCESS_THRESHOLD = 1
K8S_PROBE_DEFAULT_TIMEOUT_S = 1
# the config the probe tests use: llama-3.1-70b-instruct-tp4.yaml, startupTimeout 3600;
# docs/DEPLOY.md: the readiness (Azure) / startup (Kubernetes) probe allows startupTimeout
STARTUP_TIMEOUT_S = 3600


def load(path: Path) -> Any:
    return (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )


def dump(path: Path, data: Any) -> None:
    text = json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_gives_valid_assets(tmp_path, platform, config):
    written = generate(platform, config, out=tmp_path)
    assert (tmp_path / "README.md") in written
    assert validate_dir(tmp_path) == []


@pytest.mark.parametrize(
    ("platform", "options", "expect"),
    [
        ("k8s", {"gpus_per_node": 4}, "leaderworkerset.yaml"),
        ("k8s", {"disable_token_auth": True, "replicas": 3}, "deployment.yaml"),
        ("azureml", {"private": True}, "deployment.yml"),
        ("vertex", {"artifact_uri": "gs://bucket/llama"}, "model.json"),
    ],
)
def test_variants_validate_too(tmp_path, platform, options, expect):
    config = REPO / "model_configs" / "llama-3.1-405b-instruct-fp8-tp8.yaml"
    generate(platform, config, out=tmp_path, options=DeployOptions(**options))
    assert (tmp_path / expect).is_file()
    assert validate_dir(tmp_path) == []


# -- what the assets say ----------------------------------------------------------------


def assets(tmp_path: Path, platform: str, config: str = "llama-3.1-70b-instruct-tp4", **opts):
    out = tmp_path / platform
    generate(
        platform, REPO / "model_configs" / f"{config}.yaml", out=out, options=DeployOptions(**opts)
    )
    return out


def test_azure_probes_differ_and_are_sized_from_startup_timeout(tmp_path):
    out = assets(tmp_path, "azureml")
    routes = load(out / "environment.yml")["inference_config"]
    assert routes["liveness_route"]["path"] == LIVENESS  # process alive
    assert routes["readiness_route"]["path"] == READINESS  # model ready
    dep = load(out / "deployment.yml")
    ready = dep["readiness_probe"]
    window = ready["initial_delay"] + ready["period"] * ready["failure_threshold"]
    # at least startupTimeout, and not so far past it that an engine that never starts hides
    assert STARTUP_TIMEOUT_S <= window <= STARTUP_TIMEOUT_S + 120
    # the config's responseTimeout is 1200 s: capped at Azure's limit
    assert dep["request_settings"]["request_timeout_ms"] == AZURE_MAX_REQUEST_TIMEOUT_MS
    assert dep["model_mount_path"].startswith("/")
    assert dep["environment_variables"]["TSVLLM_DISABLE_TOKEN_AUTH"] == "1"
    assert "auth_mode: key" in (out / "endpoint.yml").read_text()
    assert "endpoint authenticates every request" in (out / "deployment.yml").read_text()
    assert "public_network_access" not in load(out / "endpoint.yml")


def test_azure_private_closes_the_network_both_ways(tmp_path):
    out = assets(tmp_path, "azureml", private=True)
    assert load(out / "endpoint.yml")["public_network_access"] == "disabled"
    dep = load(out / "deployment.yml")
    assert dep["egress_public_network_access"] == "disabled"
    assert dep["environment_variables"]["HF_HUB_OFFLINE"] == "1"


def test_k8s_deployment_shape(tmp_path):
    out = assets(tmp_path, "k8s")
    dep = load(out / "deployment.yaml")
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16384Mi"}} in pod[
        "spec"
    ]["volumes"]
    startup = c["startupProbe"]
    window = startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert STARTUP_TIMEOUT_S <= window <= STARTUP_TIMEOUT_S + 120
    for kind in ("startupProbe", "livenessProbe"):  # anything else is refused by the API server
        assert c[kind].get("successThreshold", 1) == K8S_PROBE_DEFAULT_SUCCESS_THRESHOLD
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        # an exec probe starts Python: Kubernetes' 1 s default would fail it
        assert c[kind]["timeoutSeconds"] > K8S_PROBE_DEFAULT_TIMEOUT_S
    assert c["readinessProbe"]["exec"]["command"][-1] == "ready"  # token auth on: exec probes
    assert c["livenessProbe"]["exec"]["command"][-1] == "alive"
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert env["TSVLLM_METRICS_BIND"]["value"] == "0.0.0.0"
    assert env["MODEL_ID"]["value"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert load(out / "pvc.yaml")["spec"]["accessModes"] == ["ReadWriteOnce"]
    shared = load(assets(tmp_path / "r", "k8s", replicas=2) / "pvc.yaml")
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_without_token_auth_uses_http_probes(tmp_path):
    c = load(assets(tmp_path, "k8s", disable_token_auth=True) / "deployment.yaml")["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": READINESS, "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": LIVENESS, "port": 8080}


def test_vertex_spec_routes_and_env(tmp_path):
    spec = load(assets(tmp_path, "vertex") / "model.json")["containerSpec"]
    assert spec["predictRoute"] == VERTEX_PREDICT
    assert spec["healthRoute"] == READINESS
    assert spec["ports"] == [{"containerPort": 8080}]
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert env["TSVLLM_DISABLE_TOKEN_AUTH"] == "1"
    assert env["TENSOR_PARALLEL_SIZE"] == "4"
    assert int(spec["sharedMemorySizeMb"]) > 0
    with_uri = load(assets(tmp_path / "b", "vertex", artifact_uri="gs://b/m") / "model.json")
    assert with_uri["artifactUri"] == "gs://b/m"
    assert "MODEL_ID" not in {e["name"] for e in with_uri["containerSpec"]["env"]}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_no_secret_values_in_any_asset(tmp_path, platform, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_do_not_leak")
    out = assets(tmp_path, platform)
    for path in out.iterdir():
        assert "hf_sekrit" not in path.read_text()


@pytest.mark.parametrize("platform", PLATFORMS)
def test_readme_has_commands_to_paste(tmp_path, platform):
    text = (assets(tmp_path, platform) / "README.md").read_text()
    command = {
        "azureml": "az ml online-endpoint create --file endpoint.yml",
        "k8s": "kubectl apply -f",
        "vertex": "gcloud ai models upload",
    }[platform]
    assert command in text
    assert "```bash" in text


# -- broken variants: one fault each, the message names the field ----------------------

Mutation = Callable[[Any], None]


def _set(*path: Any, value: Any) -> Mutation:
    def mutate(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return mutate


K8S_C = ("spec", "template", "spec", "containers", 0)
LWS_T = ("spec", "leaderWorkerTemplate")

BROKEN = [
    # Azure ML
    (
        "azureml",
        "deployment.yml",
        _set("request_settings", "request_timeout_ms", value=200_000),
        "request_settings.request_timeout_ms",
    ),
    ("azureml", "deployment.yml", _set("model_mount_path", value="model"), "model_mount_path"),
    ("azureml", "deployment.yml", _set("instance_cont", value=1), "instance_cont: azure-ai-ml"),
    (
        "azureml",
        "deployment.yml",
        _set("readiness_probe", "period", value="often"),
        "readiness_probe.period",
    ),
    ("azureml", "endpoint.yml", _set("auth_mode", value="none"), "auth_mode"),
    ("azureml", "endpoint.yml", _set("name", value="9-" + "x" * 40), "endpoint.yml: name"),
    (
        "azureml",
        "environment.yml",
        _set("inference_config", "readiness_route", "path", value="predictions/vllm/1.0/v1/models"),
        "inference_config.readiness_route.path",
    ),
    (
        "azureml",
        "environment.yml",
        _set("inference_config", "liveness_route", "port", value=70000),
        "inference_config.liveness_route.port",
    ),
    (
        "azureml",
        "environment.yml",
        _set("inference_config", "readiness_route", value={"port": 8080, "path": "/alive"}),
        "inference_config.readiness_route",
    ),
    # Kubernetes
    (
        "k8s",
        "deployment.yaml",
        _set(*K8S_C, "resources", "limits", "nvidia.com/gpu", value="2"),
        "nvidia.com/gpu",
    ),
    ("k8s", "deployment.yaml", _set(*K8S_C, "portz", value=[]), "portz"),
    (
        "k8s",
        "deployment.yaml",
        _set(*K8S_C, "ports", 0, "containerPort", value=70000),
        "containerPort",
    ),
    (
        "k8s",
        "deployment.yaml",
        _set(*K8S_C, "startupProbe", value={"httpGet": {"path": "predictions", "port": 8080}}),
        "startupProbe.httpGet.path",
    ),
    ("k8s", "deployment.yaml", _set("kind", value="Deploymnet"), "kind"),
    ("k8s", "deployment.yaml", _set("spec", "replicas", value="one"), "replicas"),
    ("k8s", "service.yaml", _set("spec", "ports", 0, "port", value=0), "spec.ports[0].port"),
    ("k8s", "pvc.yaml", _set("spec", "accessModes", value="ReadWriteOnce"), "accessModes"),
    # Vertex AI
    (
        "vertex",
        "model.json",
        _set("containerSpec", "predictRoute", value="predict"),
        "containerSpec.predictRoute",
    ),
    (
        "vertex",
        "model.json",
        _set("containerSpec", "ports", 0, "containerPort", value=0),
        "containerSpec.ports[0].containerPort",
    ),
    ("vertex", "model.json", _set("containerSpec", "imagUri", value="x"), "imagUri"),
    ("vertex", "model.json", _set("containerSpec", "imageUri", value=""), "imageUri"),
    (
        "vertex",
        "model.json",
        _set("containerSpec", "env", 0, "name", value="AIP_HTTP_PORT"),
        "containerSpec.env[0].name",
    ),
    (
        "vertex",
        "model.json",
        _set("containerSpec", "sharedMemorySizeMb", value="lots"),
        "sharedMemorySizeMb",
    ),
]

BROKEN_LWS = [
    (_set(*LWS_T, "size", value="two"), "spec.leaderWorkerTemplate.size"),
    (_set(*LWS_T, "restartPolicy", value="Always"), "spec.leaderWorkerTemplate.restartPolicy"),
    (_set(*LWS_T, "workerTempl", value={}), "workerTempl"),
    (
        _set(*LWS_T, "workerTemplate", "spec", "containers", 0, "imagePullPolicy", value=3),
        "spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].imagePullPolicy",
    ),
    (
        _set(
            *LWS_T,
            "leaderTemplate",
            "spec",
            "containers",
            0,
            "resources",
            "requests",
            "nvidia.com/gpu",
            value="8",
        ),
        "nvidia.com/gpu",
    ),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    config = REPO / "model_configs" / "llama-3.1-70b-instruct-tp4.yaml"
    dirs = {p: root / p for p in PLATFORMS}
    for platform, out in dirs.items():
        generate(platform, config, out=out)
    dirs["lws"] = root / "lws"
    generate(
        "k8s",
        REPO / "model_configs" / "llama-3.1-405b-instruct-fp8-tp8.yaml",
        out=dirs["lws"],
        options=DeployOptions(gpus_per_node=4),
    )
    for out in dirs.values():
        assert validate_dir(out) == []
    return dirs


def broken_copy(pristine: Path, tmp_path: Path, file: str, mutate: Mutation) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(pristine, out)
    data = load(out / file)
    mutate(data)
    dump(out / file, data)
    return out


@pytest.mark.parametrize(
    ("platform", "file", "mutate", "field"), BROKEN, ids=[f"{b[0]}-{b[3]}" for b in BROKEN]
)
def test_each_fault_fails_naming_the_field(pristine, tmp_path, platform, file, mutate, field):
    out = broken_copy(pristine[platform], tmp_path, file, mutate)
    problems = validate_dir(out)
    assert problems, "the fault was not found"
    assert any(field in str(p) for p in problems), [str(p) for p in problems]


@pytest.mark.parametrize(("mutate", "field"), BROKEN_LWS, ids=[b[1] for b in BROKEN_LWS])
def test_each_leader_worker_set_fault_fails_naming_the_field(pristine, tmp_path, mutate, field):
    out = broken_copy(pristine["lws"], tmp_path, "leaderworkerset.yaml", mutate)
    problems = validate_dir(out)
    assert any(field in str(p) for p in problems), [str(p) for p in problems]


def test_unknown_files_and_empty_folders_are_not_passed_silently(tmp_path):
    (tmp_path / "notes.yaml").write_text("hello: world\n")
    assert "not an Azure ML, Kubernetes or Vertex AI asset" in str(validate_dir(tmp_path)[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no deployment assets" in str(validate_dir(empty)[0])


def test_cli_deploy_then_validate(tmp_path, capsys):
    config = str(REPO / "model_configs" / "qwen3-8b.yaml")
    assert cli(["deploy", "vertex", config, "--out", str(tmp_path / "v")]) == 0
    assert cli(["validate", str(tmp_path / "v")]) == 0
    spec = load(tmp_path / "v" / "model.json")
    spec["containerSpec"]["healthRoute"] = "health"
    dump(tmp_path / "v" / "model.json", spec)
    assert cli(["validate", str(tmp_path / "v")]) == 1
    assert re.search(
        r"containerSpec.healthRoute: route 'health' must start with '/'", capsys.readouterr().err
    )
    assert cli(["deploy", "k8s", config, "--out", str(tmp_path / "k"), "--private"]) == 2
    assert "--private applies to azureml only" in capsys.readouterr().err
