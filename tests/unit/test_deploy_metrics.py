"""Kubernetes metrics assets: the Service's metrics port, KEDA's ScaledObject and the HPA on
vllm:num_requests_waiting, the Grafana dashboard; valid variants pass ``tsvllm validate``,
broken ones fail naming the field."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tsvllm.cli import main as cli
from tsvllm.deploy import DeployOptions, generate
from tsvllm.deploy.autoscaling import (
    DASHBOARD,
    VLLM_SERIES,
    dashboard_exprs,
    exposed_series,
    unknown_series,
)
from tsvllm.deploy.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "model_configs" / "tiny-cpu.yaml"
BIG = REPO / "model_configs" / "llama-3.1-405b-instruct-fp8-tp8.yaml"


def k8s(tmp_path: Path, config: Path = TINY, **options) -> Path:
    out = tmp_path / "k8s"
    generate("k8s", config, out=out, options=DeployOptions(**options))
    return out


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_the_service_names_the_metrics_port_and_the_pods_are_annotated(tmp_path):
    out = k8s(tmp_path)
    ports = {p["name"]: p for p in load(out / "service.yaml")["spec"]["ports"]}
    assert ports["metrics"]["port"] == 8082 and ports["metrics"]["targetPort"] == "metrics"
    pod = load(out / "deployment.yaml")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    container = pod["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 8082} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TSVLLM_METRICS_BIND"] == "0.0.0.0"
    assert not (out / "scaledobject.yaml").exists() and not (out / "hpa.yaml").exists()
    assert (out / "grafana-dashboard.json").is_file()
    assert validate_dir(out) == []


@pytest.mark.parametrize(
    ("config", "options", "kind"),
    [
        (TINY, {"autoscaling": "keda", "replicas": 2}, "Deployment"),
        (TINY, {"autoscaling": "hpa", "max_replicas": 6}, "Deployment"),
        (BIG, {"autoscaling": "keda", "gpus_per_node": 4}, "LeaderWorkerSet"),
        (BIG, {"autoscaling": "hpa", "gpus_per_node": 4}, "LeaderWorkerSet"),
    ],
)
def test_autoscaling_variants_validate(tmp_path, config, options, kind):
    out = k8s(tmp_path, config, **options)
    assert validate_dir(out) == []
    file = "scaledobject.yaml" if options["autoscaling"] == "keda" else "hpa.yaml"
    spec = load(out / file)["spec"]
    assert spec["scaleTargetRef"]["kind"] == kind
    readme = (out / "README.md").read_text()
    assert file in readme and "## Metrics and autoscaling" in readme


def test_the_scaled_object_scales_on_the_engines_queue(tmp_path):
    out = k8s(
        tmp_path,
        autoscaling="keda",
        replicas=2,
        max_replicas=5,
        waiting_per_replica=8,
        prometheus_url="http://prom.monitoring:9090",
    )
    so = load(out / "scaledobject.yaml")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 5)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["query"] == 'sum(vllm:num_requests_waiting{model_name="tiny"})'
    assert meta["threshold"] == "8" and meta["serverAddress"] == "http://prom.monitoring:9090"


def test_the_hpa_uses_the_adapters_pods_metric(tmp_path):
    out = k8s(tmp_path, autoscaling="hpa", replicas=1, max_replicas=3)
    spec = load(out / "hpa.yaml")["spec"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert "seriesQuery" in (out / "README.md").read_text()  # the adapter rule to install


def _broken(tmp_path: Path, file: str, mutate, **options) -> list[str]:
    out = k8s(tmp_path, **options)
    data = load(out / file)
    mutate(data)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / file).write_text(yaml.safe_dump(data, sort_keys=False))
    return [str(p) for p in validate_dir(broken)]


def _del(*path):
    def mutate(data):
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return mutate


def _set(*path, value):
    def mutate(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return mutate


TRIGGER = ("spec", "triggers", 0)
BROKEN_KEDA = [
    (_del("spec", "scaleTargetRef"), "ScaledObject schema: 'scaleTargetRef' is a required"),
    (_set("spec", "minReplicaCount", value="two"), "spec.minReplicaCount"),
    (_set("spec", "maxReplicaCount", value=1), "spec.maxReplicaCount: 1 is below"),
    (_set("spec", "pollingIntervall", value=5), "'pollingIntervall' was unexpected"),
    (_set(*TRIGGER, "metricType", value="Average"), "spec.triggers[0].metricType"),
    (_del(*TRIGGER, "metadata", "query"), "spec.triggers[0].metadata.query: required"),
    (_set(*TRIGGER, "metadata", "threshold", value="many"), "metadata.threshold: 'many'"),
    (_set(*TRIGGER, "metadata", "threshold", value=4), "spec.triggers[0].metadata.threshold"),
    (_set(*TRIGGER, "metadata", "serverAddress", value="prom:9090"), "not an http(s) URL"),
    (_set("apiVersion", value="keda.sh/v1"), "apiVersion"),
]


@pytest.mark.parametrize(("mutate", "field"), BROKEN_KEDA, ids=[b[1] for b in BROKEN_KEDA])
def test_each_scaled_object_fault_fails_naming_the_field(tmp_path, mutate, field):
    problems = _broken(tmp_path, "scaledobject.yaml", mutate, autoscaling="keda", replicas=2)
    assert any(field in p for p in problems), problems


BROKEN_HPA = [
    (_set("spec", "maxReplicas", value=0), "spec.maxReplicas"),
    (_set("spec", "metrics", 0, "pods", "target", "type", value=7), "type"),
    (_set("spec", "metricz", value=[]), "metricz"),
    (_del("spec", "scaleTargetRef"), "scaleTargetRef"),
]


@pytest.mark.parametrize(("mutate", "field"), BROKEN_HPA, ids=[b[1] for b in BROKEN_HPA])
def test_each_hpa_fault_fails_naming_the_field(tmp_path, mutate, field):
    problems = _broken(tmp_path, "hpa.yaml", mutate, autoscaling="hpa", replicas=2)
    assert any(field in p for p in problems), problems


# -- the dashboard ----------------------------------------------------------------------


def _vllm_source_series() -> dict[str, set[str]]:
    """Every series vLLM 0.32's PrometheusStatLogger defines, by type, read from its source
    (vllm/v1/metrics/loggers.py) without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin, "vLLM is not installed"
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    found: dict[str, set[str]] = {"gauge": set(), "counter": set(), "histogram": set()}
    pattern = r"_(gauge|counter|histogram)_cls\(\s*name=\"(vllm:[a-z0-9_:]+)\""
    for kind, name in re.findall(pattern, source):
        found[kind].add(name)
    if "vllm:cache_config_info" in source:  # log_metrics_info's gauge (name built from type)
        found["gauge"].add("vllm:cache_config_info")
    return found


def test_the_series_list_is_vllms_own():
    source = _vllm_source_series()
    assert source["gauge"] >= {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
    for kind, names in VLLM_SERIES.items():
        assert set(names) == source[kind], kind


def test_the_dashboard_parses_and_every_expr_names_series_vllm_emits():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(dashboard["panels"]) >= 6 and all(p.get("targets") for p in dashboard["panels"])
    named = set()
    for title, expr in exprs:
        names = re.findall(r"vllm:[A-Za-z0-9_:]+", expr)
        assert names, f"{title}: {expr} names no vLLM series"
        assert unknown_series(expr) == [], (title, expr)
        named.update(names)
        for label in ("ts_model", "ts_version", "ts_worker"):
            assert label in expr, (title, expr)  # per model, version and worker
    assert named >= {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
    }
    assert named <= exposed_series()
    quantiles = " ".join(expr for _, expr in exprs)
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.95," in quantiles
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables >= {"datasource", "model", "version", "worker"}


def test_a_dashboard_naming_an_unknown_series_fails_validation(tmp_path):
    out = k8s(tmp_path)
    data = json.loads((out / "grafana-dashboard.json").read_text())
    data["panels"][0]["targets"][0]["expr"] = "sum(vllm:num_requests_runing)"
    data["panels"][1]["targets"] = []
    (out / "grafana-dashboard.json").write_text(json.dumps(data))
    problems = [str(p) for p in validate_dir(out)]
    assert any("vllm:num_requests_runing: not a series vLLM 0.32 emits" in p for p in problems)
    assert any("panels[1]: a panel without queries" in p for p in problems)


def test_cli_deploy_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["deploy", "k8s", str(TINY), "--out", str(out), "--autoscaling", "keda"]
    assert cli([*argv, "--max-replicas", "3", "--waiting-per-replica", "2"]) == 0
    so = load(out / "scaledobject.yaml")
    assert so["spec"]["maxReplicaCount"] == 3
    assert so["spec"]["triggers"][0]["metadata"]["threshold"] == "2"
    assert cli(["validate", str(out)]) == 0
    assert (
        cli(["deploy", "vertex", str(TINY), "--out", str(tmp_path / "v"), "--autoscaling", "hpa"])
        == 2
    )
    assert "--autoscaling applies to k8s only" in capsys.readouterr().err
