"""Kubernetes autoscaling on vLLM's queue, and the Grafana dashboard of the engines' series.

Every pod serves its engines' ``vllm:*`` series on the metrics port, next to TorchServe's
own (:mod:`tsvllm.host.metrics_proxy`). ``tsvllm deploy k8s --autoscaling keda`` adds a KEDA
``ScaledObject`` whose Prometheus trigger scales on ``vllm:num_requests_waiting`` (requests
queued in the engines); ``--autoscaling hpa`` adds an ``autoscaling/v2``
HorizontalPodAutoscaler on the same series as a Pods metric served by prometheus-adapter
(:data:`ADAPTER_RULE`). Both keep between ``--replicas`` and ``--max-replicas`` pods,
aiming at ``--waiting-per-replica`` queued requests per pod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

KEDA_API = "keda.sh/v1alpha1"
AUTOSCALERS = ("none", "keda", "hpa")
#: queued requests per replica both autoscalers aim at
DEFAULT_WAITING_PER_REPLICA = 4.0
#: kube-prometheus-stack's Prometheus Service (change with --prometheus-url)
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
#: where the dashboard ships (package data); ``tsvllm deploy k8s`` copies it beside the assets
DASHBOARD = Path(__file__).parent / "dashboards" / "tsvllm-vllm.json"
DASHBOARD_FILE = "grafana-dashboard.json"
#: the series both autoscalers scale on, and the name prometheus-adapter serves it under
WAITING = "vllm:num_requests_waiting"
ADAPTER_METRIC = "vllm_num_requests_waiting"
#: a scale-down waits this long for the queue to stay low (the HPA's default is 300 s too)
SCALE_DOWN_WINDOW_S = 300
#: prometheus-adapter's rule (Helm values ``rules.custom``) that serves ``vllm:*`` series
#: as per-pod custom metrics ``vllm_*`` (the Kubernetes metric name cannot hold ``:``)
ADAPTER_RULE = """\
rules:
  custom:
    - seriesQuery: '{__name__=~"^vllm:.*",namespace!="",pod!=""}'
      resources:
        overrides:
          namespace: {resource: namespace}
          pod: {resource: pod}
      name:
        matches: "^vllm:(.*)$"
        as: "vllm_${1}"
      metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
"""


def waiting_query(served_name: str) -> str:
    """PromQL: requests queued in every engine serving ``served_name`` (vLLM's
    ``model_name`` label), summed over pods and workers."""
    return f'sum({WAITING}{{model_name="{served_name}"}})'


def _target_ref(name: str, *, multi_node: bool) -> dict[str, str]:
    if multi_node:  # LeaderWorkerSet has the scale subresource: one replica = one group
        return {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "name": name,
        }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def scaled_object(
    *,
    name: str,
    labels: dict[str, str],
    served_name: str,
    min_replicas: int,
    max_replicas: int,
    waiting_per_replica: float,
    prometheus_url: str,
    multi_node: bool,
) -> dict[str, Any]:
    """A KEDA ScaledObject: ceil(queued requests / ``waiting_per_replica``) replicas."""
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": _target_ref(name, multi_node=multi_node),
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": SCALE_DOWN_WINDOW_S,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}}
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": waiting_query(served_name),
                        "threshold": f"{waiting_per_replica:g}",
                    },
                }
            ],
        },
    }


def hpa(
    *,
    name: str,
    labels: dict[str, str],
    min_replicas: int,
    max_replicas: int,
    waiting_per_replica: float,
    multi_node: bool,
) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the per-pod ``vllm_num_requests_waiting`` (prometheus-adapter)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": _target_ref(name, multi_node=multi_node),
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": ADAPTER_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": f"{waiting_per_replica:g}",
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}},
        },
    }


#: the series vLLM 0.32 emits (vllm/v1/metrics/loggers.py, PrometheusStatLogger), by type;
#: counters are exposed with ``_total``, histograms with ``_bucket``/``_sum``/``_count``
VLLM_SERIES: dict[str, tuple[str, ...]] = {
    "gauge": (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_requests_waiting_by_reason",
        "vllm:num_requests_kv_fetch_by_stage",
        "vllm:engine_sleep_state",
        "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    ),
    "counter": (
        "vllm:corrupted_requests",
        "vllm:watermark_requests",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:external_prefix_cache_queries",
        "vllm:external_prefix_cache_hits",
        "vllm:mm_cache_queries",
        "vllm:mm_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:prompt_tokens_by_source",
        "vllm:prompt_tokens_cached",
        "vllm:prompt_tokens_cached_by_source",
        "vllm:generation_tokens",
        "vllm:request_success",
        "vllm:admission_rejections",
    ),
    "histogram": (
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:iteration_tokens_total",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_n",
        "vllm:request_params_max_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_num_preemptions",
        "vllm:request_prefill_kv_computed_tokens",
        "vllm:kv_block_lifetime_seconds",
        "vllm:kv_block_idle_before_evict_seconds",
        "vllm:kv_block_reuse_gap_seconds",
    ),
}
_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
_SERIES_NAME = re.compile(r"vllm:[A-Za-z0-9_:]+")


def exposed_series() -> frozenset[str]:
    """Every sample name vLLM 0.32's metrics text can hold."""
    return frozenset(
        name + suffix
        for kind, names in VLLM_SERIES.items()
        for name in names
        for suffix in _SUFFIXES[kind]
    )


def unknown_series(expr: str) -> list[str]:
    """The ``vllm:*`` names in a PromQL ``expr`` that vLLM 0.32 does not expose."""
    known = exposed_series()
    return [name for name in _SERIES_NAME.findall(expr) if name not in known]


def dashboard_text() -> str:
    return DASHBOARD.read_text(encoding="utf-8")


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every panel target of a Grafana dashboard."""
    out = []
    for panel in dashboard.get("panels") or []:
        for target in panel.get("targets") or []:
            out.append((str(panel.get("title")), str(target.get("expr", ""))))
    return out


def is_dashboard(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("panels"), list) and "title" in data


def readme_section(
    *, autoscaling: str, served_name: str, prometheus_url: str, waiting_per_replica: float
) -> str:
    """The README's paragraphs on metrics, the dashboard and the chosen autoscaler."""
    lines = [
        "## Metrics and autoscaling",
        "",
        "Each pod's metrics port (8082, `/metrics`; pod annotations `prometheus.io/*` and the "
        "Service port named `metrics`) serves TorchServe's metrics (our hook metrics: "
        "PromptTokens, CompletionTokens, ...) and every engine's `vllm:*` series, labelled "
        "`ts_model`, `ts_version` and `ts_worker`. Import "
        f"`{DASHBOARD_FILE}` into Grafana (requests running/waiting, KV cache usage, tokens/s, "
        "TTFT and inter-token latency p50/p95, per model, version and worker).",
    ]
    if autoscaling == "keda":
        lines += [
            "",
            "`scaledobject.yaml` (needs KEDA: https://keda.sh/docs/latest/deploy/) scales on "
            f"`{waiting_query(served_name)}` from Prometheus at `{prometheus_url}` "
            f"(--prometheus-url): about one replica per {waiting_per_replica:g} queued "
            "requests. Apply it after the workload: `kubectl apply -f scaledobject.yaml`.",
        ]
    elif autoscaling == "hpa":
        lines += [
            "",
            "`hpa.yaml` scales on the per-pod custom metric "
            f"`{ADAPTER_METRIC}` (average {waiting_per_replica:g} per pod). It needs "
            "prometheus-adapter serving `vllm:*` series as custom metrics, e.g. with these "
            "Helm values (`helm install prometheus-adapter "
            "prometheus-community/prometheus-adapter -f adapter-values.yaml`), and Prometheus "
            "scraping the pods with `namespace` and `pod` labels:",
            "",
            "```yaml",
            ADAPTER_RULE.rstrip(),
            "```",
            "",
            f"Then `kubectl get --raw /apis/custom.metrics.k8s.io/v1beta1/namespaces/default/"
            f"pods/*/{ADAPTER_METRIC}` lists it, and `kubectl apply -f hpa.yaml`.",
        ]
    return "\n".join(lines)


def dump_dashboard() -> str:
    """The dashboard as shipped, re-serialised (a check that it parses)."""
    return json.dumps(json.loads(dashboard_text()), indent=2) + "\n"
