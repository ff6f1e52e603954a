"""``tsvllm deploy k8s``: a Deployment (or a LeaderWorkerSet beyond one node) and its Service.

One engine over several nodes (``handler.vllm_engine_config.nnodes``, or more GPUs than
``--gpus-per-node``) is a LeaderWorkerSet group on vLLM's own multi-node runtime: every pod
gets the same environment (``VLLM_ARGS`` with ``--nnodes``); the leader runs TorchServe with
``--master-addr $(LWS_LEADER_ADDRESS)``, the others ``worker-node`` with their
``$(LWS_WORKER_INDEX)`` (:func:`leader_args`, :func:`worker_args`: the commands the two-host
test runs, from :func:`tsvllm.host.worker_node.follower_command`).

Weights live on a PersistentVolumeClaim (Hugging Face downloads are cached there too), the
HF token comes from a Secret at run time, /dev/shm is a memory emptyDir, and a startup
probe gives the model ``startupTimeout`` seconds to load. Token auth stays on (a cluster
network does not authenticate), so the probes are exec probes that read the key in the
pod, unless ``--disable-token-auth`` says a gateway in front authenticates.
TorchServe's metrics bind 0.0.0.0 here, deliberately, for the Prometheus scrape on 8082.

Rollouts and scale-downs lose no request: a ``preStop`` sleep lets the Service drop the pod
before SIGTERM, the entrypoint then drains (503 to new requests, which also fails the
readiness probe; running ones get ``TSVLLM_DRAIN_TIMEOUT_S``), and
``terminationGracePeriodSeconds`` covers preStop + drain + abort + stop
(:func:`tsvllm.deploy.common.grace_period_s`; ``tsvllm validate`` checks it).
"""

from __future__ import annotations

from typing import Any

from tsvllm.deploy import autoscaling as autoscale
from tsvllm.deploy.common import (
    INFERENCE_PORT,
    LIVENESS_ROUTE,
    METRICS_PORT,
    OPENAI_BASE,
    PRESTOP_SLEEP_S,
    READINESS_ROUTE,
    DeployError,
    DeployOptions,
    Target,
    container_env,
    drain_timeout_s,
    dump_yaml,
    grace_period_s,
    probe_timing,
    readme_notes,
    shm_mb,
)
from tsvllm.deploy.multinode import (
    GPU,
    POD_IP,
    POD_WORKDIR,
    leader_args,
    node_count,
    spanning,
    worker_args,
)

WEIGHTS_MOUNT = "/models"
HF_SECRET = "hf-token"
LWS_API = "leaderworkerset.x-k8s.io/v1"


def _probe_cmd(kind: str) -> dict[str, Any]:
    return {"exec": {"command": ["python3", "-m", "tsvllm.host.entrypoint", "--probe", kind]}}


def probes(target: Target, *, token_auth: bool) -> dict[str, Any]:
    """startup (slow load), readiness (model ready) and liveness (process alive)."""
    timing = probe_timing(target.startup_timeout)
    if token_auth:  # TorchServe wants the key even on /alive: probe from inside the pod
        ready, alive = _probe_cmd("ready"), _probe_cmd("alive")
    else:
        ready = {"httpGet": {"path": READINESS_ROUTE, "port": INFERENCE_PORT}}
        alive = {"httpGet": {"path": LIVENESS_ROUTE, "port": INFERENCE_PORT}}
    return {
        "startupProbe": {
            **ready,
            "periodSeconds": timing.period,
            "timeoutSeconds": 5,
            "failureThreshold": timing.startup_failures,
            "initialDelaySeconds": timing.initial_delay,
        },
        "readinessProbe": {
            **ready,
            "periodSeconds": timing.period,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **alive,
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def resources(target: Target, gpus: int) -> dict[str, Any]:
    scale = max(gpus, 1)
    requests = {"cpu": str(4 * scale if gpus else 2), "memory": f"{32 * scale if gpus else 8}Gi"}
    limits = {"memory": requests["memory"]}
    if gpus:  # extended resources: request must equal limit
        requests[GPU] = limits[GPU] = str(gpus)
    return {"requests": requests, "limits": limits}


def env_list(target: Target, *, token_auth: bool, extra: dict[str, str]) -> list[dict[str, Any]]:
    source = (
        {"MODEL_ID": target.hub_id}
        if target.hub_id
        else {"MODEL_PATH": f"{WEIGHTS_MOUNT}/{target.local_dir}"}
    )
    env = container_env(
        target,
        **source,
        HF_HOME=f"{WEIGHTS_MOUNT}/.hf-cache",  # downloads land on the volume, once
        # deliberate: Prometheus scrapes the pod's metrics port (annotations below)
        TSVLLM_METRICS_BIND="0.0.0.0",
        **({} if token_auth else {"TSVLLM_DISABLE_TOKEN_AUTH": "1"}),
        **extra,
    )
    items = [{"name": k, "value": v} for k, v in env.items()]
    items.append(
        {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": HF_SECRET, "key": "HF_TOKEN", "optional": True}},
        }
    )
    return items


def container(
    target: Target,
    *,
    gpus: int,
    token_auth: bool,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    serve: bool = True,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "tsvllm",
        "image": target.image,
        "imagePullPolicy": "IfNotPresent",
    }
    if args:  # after the image's ENTRYPOINT (tini -- python3 -m tsvllm.host.entrypoint)
        c["args"] = args
    c["env"] = env_list(target, token_auth=token_auth, extra=env or {})
    if serve:
        c["ports"] = [
            {"name": "http", "containerPort": INFERENCE_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ]
        c.update(probes(target, token_auth=token_auth))
        # the endpoints controller removes the terminating pod from the Service meanwhile
        c["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}}
    c["resources"] = resources(target, gpus)
    c["volumeMounts"] = [
        {"name": "weights", "mountPath": WEIGHTS_MOUNT},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    c["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return c


def pod_spec(target: Target, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # preStop + drain + abort + stop: a rollout or scale-down loses no request
        "terminationGracePeriodSeconds": grace_period_s(drain_timeout_s(target)),
        "containers": containers,
        "volumes": [
            {"name": "weights", "persistentVolumeClaim": {"claimName": f"{target.name}-weights"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mb(target)}Mi"}},
        ],
    }


def _labels(target: Target) -> dict[str, str]:
    return {"app.kubernetes.io/name": target.name, "app.kubernetes.io/part-of": "tsvllm"}


SCRAPE = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": "/metrics",
}


def deployment(target: Target, *, replicas: int, token_auth: bool) -> dict[str, Any]:
    labels = _labels(target)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": target.name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            # one engine per GPU set: never run old and new side by side on the same GPUs
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(SCRAPE)},
                "spec": pod_spec(
                    target, [container(target, gpus=target.gpus, token_auth=token_auth)]
                ),
            },
        },
    }


def leader_worker_set(target: Target, *, replicas: int, token_auth: bool) -> dict[str, Any]:
    """One engine over ``nnodes`` pods (``target`` from :func:`spanning`), on vLLM's own
    multi-node runtime: the leader serves, the workers run vLLM's headless workers."""
    nodes = target.config.handler.nnodes
    per_node = target.gpus // nodes
    labels = _labels(target)
    env = {"TSVLLM_WORKDIR": POD_WORKDIR}  # worker_args() names a file under it
    leader = container(target, gpus=per_node, token_auth=token_auth, env=env, args=leader_args())
    worker = container(
        target, gpus=per_node, token_auth=token_auth, env=env, args=worker_args(), serve=False
    )
    for c in (leader, worker):
        c["env"].append(dict(POD_IP))
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": target.name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": nodes,
                # vLLM's runtime cannot take a node back: a lost pod restarts the group
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {
                        "labels": {**labels, "role": "leader"},
                        "annotations": dict(SCRAPE),
                    },
                    "spec": pod_spec(target, [leader]),
                },
                "workerTemplate": {
                    "metadata": {"labels": {**labels, "role": "worker"}},
                    "spec": pod_spec(target, [worker]),
                },
            },
        },
    }


def service(target: Target, *, multi_node: bool) -> dict[str, Any]:
    selector = dict(_labels(target))
    if multi_node:
        selector["role"] = "leader"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": target.name, "labels": _labels(target)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": INFERENCE_PORT, "targetPort": "http"},
                # TorchServe's metrics and every engine's vllm:* series (ServiceMonitors
                # and scrape configs find the port by this name)
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def pvc(target: Target, *, storage_gi: int | None, shared: bool) -> dict[str, Any]:
    """The weights volume; ReadWriteMany when several pods (replicas, nodes) mount it."""
    size = storage_gi or 80 * max(target.gpus, 1)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{target.name}-weights", "labels": _labels(target)},
        "spec": {
            "accessModes": ["ReadWriteMany" if shared else "ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{size}Gi"}},
        },
    }


#: where each pod's TorchServe writes its keys (the entrypoint's work directory)
_KEY_FILE = f"{POD_WORKDIR}/ts/key_file.json"


def readme(target: Target, *, multi_node: bool, token_auth: bool) -> str:
    name = target.name
    lines = [
        f"# Kubernetes: {name}",
        "",
        "Generated by `tsvllm deploy k8s`; check with `tsvllm validate DIR`.",
        "",
        _auth_note(token_auth),
        "",
        *_readme_commands(target, multi_node=multi_node, token_auth=token_auth),
        "",
        f"OpenAI base URL inside the cluster: `http://{name}:8080{OPENAI_BASE}`. "
        f"Prometheus scrapes port {METRICS_PORT} (pod annotations). The startup probe allows "
        f"{probe_timing(target.startup_timeout).startup_window} s for the first load.",
    ]
    if target.local_dir:
        lines += [
            "",
            f"The weights are read from {WEIGHTS_MOUNT}/{target.local_dir} on the volume: "
            "copy the model folder there first (e.g. with a helper pod).",
        ]
    if multi_node:
        lines += ["", _multi_node_note(target)]
    lines += ["", _shutdown_note(target)]
    for note in readme_notes(target):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _multi_node_note(target: Target) -> str:
    """The README's paragraph on a group of pods running one engine."""
    nodes = target.config.handler.nnodes
    share = f"{target.gpus // nodes} GPUs" if target.gpu else "its CPUs"
    return (
        f"One engine spans {nodes} pods (a LeaderWorkerSet group; needs its controller), each "
        f"with {share}, on vLLM's own multi-node runtime (`--nnodes {nodes}` in VLLM_ARGS): "
        "the leader (`--master-addr $(LWS_LEADER_ADDRESS)`) serves through TorchServe, the "
        "others run `worker-node --node-rank $(LWS_WORKER_INDEX)`; every pod fetches the "
        "model and writes the same config from the same environment. The pods must reach "
        "each other on any port (no NetworkPolicy in between), and they share the weights "
        "volume, so it is ReadWriteMany (pick a storage class that offers it). vLLM cannot "
        "take a lost node back: the group is recreated when a pod restarts, and meanwhile "
        "the leader answers 503 (its engine start waits up to startupTimeout for the "
        "others). See docs/DEPLOY.md, Multi-node."
    )


def _shutdown_note(target: Target) -> str:
    """The README's paragraph on what a rollout, scale-down or delete does to requests."""
    drain = drain_timeout_s(target)
    return (
        "Rollouts, scale-downs and deletes lose no request: the pod's preStop hook sleeps "
        f"{PRESTOP_SLEEP_S} s so the Service stops sending it traffic, then SIGTERM makes the "
        "entrypoint drain: new requests get 503 with Retry-After (the readiness probe fails "
        f"too), running ones get up to {drain:g} s (TSVLLM_DRAIN_TIMEOUT_S) to finish, what "
        "still runs then ends cleanly (a stream gets an error event and [DONE]), and "
        f"TorchServe stops. terminationGracePeriodSeconds "
        f"({grace_period_s(drain)} s) covers all of it; raise both together for longer "
        "generations (`tsvllm validate` checks them). The Deployment's strategy is Recreate: "
        "old pods drain before new ones start, so a rollout has a gap without capacity."
    )


def _auth_note(token_auth: bool) -> str:
    """The README's paragraph on who checks the inference key."""
    if token_auth:
        return (
            "Token auth is ON (nothing in a cluster authenticates for you): each pod writes its "
            f"keys to {_KEY_FILE} (the KEY line below reads one pod's). Each pod has its own "
            "key: with several replicas behind the Service, put an authenticating gateway in "
            "front and regenerate with --disable-token-auth."
        )
    return (
        "Token auth is OFF (--disable-token-auth): only expose the Service behind a "
        "gateway that authenticates."
    )


def _readme_commands(target: Target, *, multi_node: bool, token_auth: bool) -> list[str]:
    """The README's bash block: secret, volume, workload, wait, port-forward, a request."""
    name = target.name
    workload = "leaderworkerset.yaml" if multi_node else "deployment.yaml"
    pod = f"pod/{name}-0" if multi_node else f"deploy/{name}"  # the LWS leader is <name>-0
    lines = [
        "```bash",
        f"kubectl create secret generic {HF_SECRET} --from-literal=HF_TOKEN=$HF_TOKEN  "
        "# gated models",
        "kubectl apply -f pvc.yaml",
    ]
    if multi_node:
        lines.append(
            "# needs the LeaderWorkerSet controller: https://lws.sigs.k8s.io/docs/installation/"
        )
    lines += [
        f"kubectl apply -f {workload} -f service.yaml",
        f"kubectl wait --for=condition=Available lws/{name} --timeout=2h"
        if multi_node
        else f"kubectl rollout status deployment/{name} --timeout=2h",
        f"kubectl port-forward svc/{name} 8080:8080 &",
    ]
    if token_auth:
        lines.append(
            f'KEY=$(kubectl exec {pod} -- python3 -c "import json; print(json.load('
            f"open('{_KEY_FILE}'))['inference']['key'])\")"
        )
    lines += [
        f"curl http://127.0.0.1:8080{OPENAI_BASE}/models"
        + (' -H "Authorization: Bearer $KEY"' if token_auth else ""),
        "```",
    ]
    return lines


def assets(target: Target, options: DeployOptions) -> dict[str, str]:
    """The platform entry point (:data:`tsvllm.deploy.PLATFORMS`)."""
    return generate(
        target,
        replicas=options.replicas,
        gpus_per_node=options.gpus_per_node,
        token_auth=not options.disable_token_auth,
        storage_gi=options.storage_gi,
        autoscaling=options.autoscaling,
        max_replicas=options.max_replicas,
        waiting_per_replica=options.waiting_per_replica,
        prometheus_url=options.prometheus_url,
    )


def generate(
    target: Target,
    *,
    replicas: int,
    gpus_per_node: int,
    token_auth: bool,
    storage_gi: int | None,
    autoscaling: str = "none",
    max_replicas: int | None = None,
    waiting_per_replica: float = autoscale.DEFAULT_WAITING_PER_REPLICA,
    prometheus_url: str = autoscale.DEFAULT_PROMETHEUS_URL,
) -> dict[str, str]:
    """File name → text of every Kubernetes asset (``autoscaling``: none, keda or hpa)."""
    nodes = node_count(target, gpus_per_node=gpus_per_node)
    multi_node = nodes > 1
    if multi_node:
        target = spanning(target, nodes)
    auth = "on (exec probes read the key)" if token_auth else "off (a gateway authenticates)"
    header = f"Generated by tsvllm deploy k8s. Token auth {auth}."
    volume = pvc(target, storage_gi=storage_gi, shared=multi_node or replicas > 1)
    files = {"pvc.yaml": dump_yaml(volume, header=header)}
    if multi_node:
        files["leaderworkerset.yaml"] = dump_yaml(
            leader_worker_set(target, replicas=replicas, token_auth=token_auth),
            header=header,
        )
    else:
        files["deployment.yaml"] = dump_yaml(
            deployment(target, replicas=replicas, token_auth=token_auth), header=header
        )
    files["service.yaml"] = dump_yaml(service(target, multi_node=multi_node), header=header)
    scaling = dict(
        name=target.name,
        labels=_labels(target),
        min_replicas=replicas,
        max_replicas=max(max_replicas or replicas * 4, replicas),
        waiting_per_replica=waiting_per_replica,
        multi_node=multi_node,
    )
    if autoscaling == "keda":
        so = autoscale.scaled_object(
            **scaling, served_name=target.served_names[0], prometheus_url=prometheus_url
        )
        files["scaledobject.yaml"] = dump_yaml(so, header=header)
    elif autoscaling == "hpa":
        files["hpa.yaml"] = dump_yaml(autoscale.hpa(**scaling), header=header)
    elif autoscaling != "none":
        raise DeployError(f"autoscaling {autoscaling!r}: use none, keda or hpa")
    files[autoscale.DASHBOARD_FILE] = autoscale.dump_dashboard()
    files["README.md"] = (
        readme(target, multi_node=multi_node, token_auth=token_auth)
        + "\n"
        + autoscale.readme_section(
            autoscaling=autoscaling,
            served_name=target.served_names[0],
            prometheus_url=prometheus_url,
            waiting_per_replica=waiting_per_replica,
        )
        + "\n"
    )
    return files
