"""Container entrypoint: environment → model → config → archive → TorchServe, in the foreground.

``python -m tsvllm.host.entrypoint`` is what the images run (under ``tini``). It reads the
environment only when it runs, stops with a message naming the variable to fix, and on
SIGTERM/SIGINT drains (new requests get 503 with ``Retry-After``, running ones get
``TSVLLM_DRAIN_TIMEOUT_S`` seconds, default 30, to finish, then are ended cleanly), then stops
TorchServe and every engine process before exiting (no orphans;
:func:`tsvllm.host.launcher.serve_foreground`; exit 0 when every request finished, 3 when
requests had to be ended, 1 on failure, 2 for a bad variable). ``--probe ready|alive`` is
an exec probe for platforms where token auth stays on (the probe reads the key TorchServe
wrote).

One engine over several nodes (a Kubernetes LeaderWorkerSet, :mod:`tsvllm.deploy.k8s`): every
pod gets the same environment, whose ``VLLM_ARGS`` has ``--nnodes N``. The leader runs
``... entrypoint --master-addr ADDR`` (TorchServe, as above, its engine rank 0); each other
node runs ``... entrypoint worker-node --config C --node-rank K --master-addr ADDR``: the flags
of ``tsvllm worker-node`` (:mod:`tsvllm.host.worker_node`), after the model is fetched and the
model config is written to ``C`` from the same environment, so the two cannot disagree.

The model comes from the first of these that is set:

=====================  ===============================================================
``MODEL_PATH``         a model folder (config.json, weights, tokenizer) in the container
``AZUREML_MODEL_DIR``  Azure ML's model mount; the folder holding config.json is found under it
``AIP_STORAGE_URI``    Vertex AI's gs:// copy of the artifacts, downloaded (google-cloud-storage)
``MODEL_ID``           a Hugging Face id (vLLM downloads it; HF_TOKEN for gated models), or a
                       gs:// or s3:// folder, downloaded (google-cloud-storage / boto3)
=====================  ===============================================================

Other variables: ``SERVED_MODEL_NAME`` (comma-separated names clients send as ``model``),
``TENSOR_PARALLEL_SIZE``, ``VLLM_ARGS`` (``vllm serve`` flags, checked by vLLM's parser),
``TSVLLM_DEVICE`` (auto/cpu/gpu), ``HF_HUB_OFFLINE=1`` (private networks: a hub id must be in
the local cache), ``AIP_HTTP_PORT`` or ``PORT`` (inference port, default 8080; management
and metrics are the next two), ``AIP_PREDICT_ROUTE``/``AIP_HEALTH_ROUTE`` (checked against
the routes served), ``TSVLLM_DISABLE_TOKEN_AUTH`` (only where the platform authenticates),
``TSVLLM_BIND`` (inference address, default 0.0.0.0), ``TSVLLM_METRICS_BIND`` (default
127.0.0.1), ``TSVLLM_STARTUP_TIMEOUT``, ``TSVLLM_RESPONSE_TIMEOUT``, ``TSVLLM_CONFIG`` (a model
config to start from), ``TSVLLM_HANDLER``, ``TSVLLM_WORKDIR`` (default /tmp/tsvllm),
``TSVLLM_MODEL_CACHE`` (where downloads go), ``TSVLLM_DRAIN_TIMEOUT_S`` (seconds running
requests get after SIGTERM; 0 ends them at once).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tsvllm.contract import (
    INFERENCE_PORT,
    LIVENESS_ROUTE,
    MODEL_NAME,
    OPENAI_BASE,
    PREFIX,
    READINESS_ROUTE,
    RESPONSE_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    VERTEX_PREDICT_ROUTE,
)

SOURCES = ("MODEL_PATH", "AZUREML_MODEL_DIR", "AIP_STORAGE_URI", "MODEL_ID")
_DONE = ".tsvllm-download-complete"
PROG = "tsvllm-entrypoint"


class EntrypointError(RuntimeError):
    """The environment does not describe a servable model (the message names the fix)."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EntrypointError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise EntrypointError(f"{name}={raw!r} must be at least 1")
    return value


# -- where the model comes from -------------------------------------------------------


def model_source(env: Mapping[str, str]) -> tuple[str, str]:
    """``(variable, value)`` of the first model source set in ``env``."""
    for name in SOURCES:
        value = env.get(name, "").strip()
        if value:
            return name, value
    raise EntrypointError(
        "no model given: set MODEL_PATH (a folder in the container), MODEL_ID (a Hugging "
        "Face id, gs:// or s3:// folder), or run on Azure ML (AZUREML_MODEL_DIR) or "
        "Vertex AI with an artifact URI (AIP_STORAGE_URI)"
    )


def find_model_dir(root: Path, *, var: str) -> Path:
    """The one folder under ``root`` (itself included) that holds a config.json."""
    if not root.is_dir():
        raise EntrypointError(f"{var}={root}: no such folder")
    if (root / "config.json").is_file():
        return root
    found = sorted(
        p.parent for p in root.rglob("config.json") if len(p.relative_to(root).parts) <= 5
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise EntrypointError(
            f"{var}={root}: no model folder (with config.json) under it; the model must be "
            "a Hugging Face model folder (config.json, weights, tokenizer)"
        )
    raise EntrypointError(
        f"{var}={root}: several model folders under it ({', '.join(map(str, found))}); "
        "set MODEL_PATH to the one to serve"
    )


def _split_uri(uri: str, scheme: str) -> tuple[str, str]:
    rest = uri[len(scheme) + 3 :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise EntrypointError(f"{uri}: no bucket; write {scheme}://BUCKET/FOLDER")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _target(dest: Path, prefix: str, name: str) -> Path | None:
    rel = name[len(prefix) :]
    if not rel or rel.endswith("/"):
        return None  # the folder itself, or a "directory" placeholder object
    path = (dest / rel).resolve()
    if dest.resolve() not in path.parents:
        raise EntrypointError(f"object {name!r} would be written outside {dest}; refusing")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def download_gcs(uri: str, dest: Path, *, client: Any = None) -> int:
    """Copy every object under ``gs://bucket/prefix`` into ``dest``; return the count.

    With ``STORAGE_EMULATOR_HOST`` set, google-cloud-storage talks to that emulator.
    """
    if client is None:
        try:
            from google.cloud import storage
        except ImportError as exc:
            raise EntrypointError(
                f"{uri}: gs:// needs google-cloud-storage: pip install 'tsvllm[deploy]'"
            ) from exc
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="emulator", credentials=AnonymousCredentials())
        else:
            client = storage.Client()
    bucket, prefix = _split_uri(uri, "gs")
    count = 0
    for blob in client.list_blobs(bucket, prefix=prefix):
        path = _target(dest, prefix, blob.name)
        if path is not None:
            blob.download_to_filename(str(path))
            count += 1
    return count


def download_s3(uri: str, dest: Path, *, client: Any = None) -> int:
    """Copy every object under ``s3://bucket/prefix`` into ``dest``; return the count.

    boto3 reads credentials and ``AWS_ENDPOINT_URL`` (S3-compatible stores) from the
    environment.
    """
    if client is None:
        try:
            import boto3
        except ImportError as exc:
            raise EntrypointError(
                f"{uri}: s3:// needs boto3: pip install 'tsvllm[deploy]'"
            ) from exc
        client = boto3.client("s3")
    bucket, prefix = _split_uri(uri, "s3")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = _target(dest, prefix, obj["Key"])
            if path is not None:
                client.download_file(bucket, obj["Key"], str(path))
                count += 1
    return count


def download(uri: str, cache: Path, *, var: str) -> Path:
    """Download ``uri`` once into ``cache`` (a restart reuses a complete copy)."""
    dest = cache / "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)[:200]
    marker = dest / _DONE
    if marker.is_file() and marker.read_text() == uri:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    fetch = download_gcs if uri.startswith("gs://") else download_s3
    print(f"{PROG}: downloading {uri} to {dest}", flush=True)
    if fetch(uri, dest) == 0:
        raise EntrypointError(f"{var}={uri}: no objects there (check the bucket and folder)")
    marker.write_text(uri)
    return dest


def resolve_model(env: Mapping[str, str], *, cache: Path) -> str:
    """The local model folder (or Hugging Face id) to serve, downloading if needed."""
    var, value = model_source(env)
    if value.startswith(("gs://", "s3://")):
        if var == "AIP_STORAGE_URI" and not value.startswith("gs://"):
            raise EntrypointError(f"AIP_STORAGE_URI={value}: Vertex AI gives a gs:// URI")
        return str(find_model_dir(download(value, cache, var=var), var=var))
    if var == "AIP_STORAGE_URI":
        raise EntrypointError(f"AIP_STORAGE_URI={value}: expected a gs:// URI")
    if var in ("MODEL_PATH", "AZUREML_MODEL_DIR"):
        return str(find_model_dir(Path(value), var=var))
    # MODEL_ID: a local folder, or a Hugging Face id
    if Path(value).is_dir():
        return str(find_model_dir(Path(value), var=var))
    from tsvllm.host.archive import HF_ID

    if not HF_ID.match(value):
        raise EntrypointError(
            f"MODEL_ID={value}: not a folder, a gs:// or s3:// URI, or a Hugging Face id "
            "like org/name"
        )
    if _truthy(env.get("HF_HUB_OFFLINE")):
        return _cached_snapshot(value)
    return value


def _cached_snapshot(repo_id: str) -> str:
    """The local snapshot of ``repo_id`` in the Hugging Face cache (offline mode)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # the hub raises several types for "not cached"
        raise EntrypointError(
            f"MODEL_ID={repo_id} with HF_HUB_OFFLINE=1: not in the Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); mount the "
            "weights and set MODEL_PATH, or pre-fill the cache"
        ) from exc


# -- the model config -----------------------------------------------------------------


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_vllm_args(text: str) -> dict[str, Any]:
    """``VLLM_ARGS`` (``vllm serve`` flags) as engine-config keys.

    ``--flag`` → True; ``--flag v`` / ``--flag=v`` → v; ``--flag a b`` → [a, b]. The keys
    go back to flags unchanged (:func:`tsvllm.engine.vllm_engine.engine_argv`), so vLLM's
    own parser is the judge of names and values.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise EntrypointError(f"VLLM_ARGS: cannot split it like a shell would: {exc}") from None
    out: dict[str, Any] = {}
    key: str | None = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            key = name.replace("-", "_")
            if key in out:
                raise EntrypointError(f"VLLM_ARGS: --{name} is given twice; keep one")
            out[key] = _scalar(value) if eq else True
            if eq:
                key = None
            continue
        if token[:1] == "-" and token[1:2].isalpha():
            raise EntrypointError(
                f"VLLM_ARGS: {token!r}: write flags in their long form (--flag-name)"
            )
        if key is None:
            raise EntrypointError(
                f"VLLM_ARGS: {token!r} is not after a --flag; write e.g. --max-model-len 4096"
            )
        current = out[key]
        if current is True:
            out[key] = _scalar(token)
        elif isinstance(current, list):
            current.append(_scalar(token))
        else:
            out[key] = [current, _scalar(token)]
    moved = {
        "model": "set the model with MODEL_PATH or MODEL_ID",
        "served_model_name": "use SERVED_MODEL_NAME",
        "tensor_parallel_size": "use TENSOR_PARALLEL_SIZE",
    }
    for name, fix in moved.items():
        if name in out:
            raise EntrypointError(f"VLLM_ARGS: --{name.replace('_', '-')} is not allowed; {fix}")
    return out


def model_config(
    env: Mapping[str, str],
    *,
    model: str,
    gpus: int | None = None,
    master_addr: str | None = None,
) -> Any:
    """The model config the environment describes, for ``model`` (folder or hub id);
    ``master_addr``: the leader's address of an engine over several nodes."""
    from tsvllm.config import validate_model_config
    from tsvllm.host.launcher import model_config_from_flags

    engine = parse_vllm_args(env.get("VLLM_ARGS", ""))
    if master_addr:
        engine["master_addr"] = master_addr
    adapters = _lora_adapters(engine)
    chat_template = engine.pop("chat_template", None)
    names = [n.strip() for n in env.get("SERVED_MODEL_NAME", "").split(",") if n.strip()]
    startup = _int_var(env, "TSVLLM_STARTUP_TIMEOUT", STARTUP_TIMEOUT_S)
    response = _int_var(env, "TSVLLM_RESPONSE_TIMEOUT", RESPONSE_TIMEOUT_S)
    tp = env.get("TENSOR_PARALLEL_SIZE", "").strip()

    if env.get("TSVLLM_CONFIG"):
        data = _config_file_data(env, engine=engine, tp=tp)
    else:
        cfg = model_config_from_flags(
            model_path=model,
            model_name=names[0] if names else "model",
            placement=_placement(env, engine=engine, tp=tp, gpus=gpus),
            engine=engine,
            startup_timeout=startup,
        )
        data = cfg.model_dump(mode="json", exclude_none=True, by_alias=True)
        data["responseTimeout"] = response
    handler = data["handler"]
    handler["model_path"] = model
    if names:
        handler["served_model_name"] = names
    if adapters:
        handler["adapters"] = adapters
    if chat_template:
        handler["chat_template"] = chat_template
    return validate_model_config(data, source="the container environment")


def _lora_adapters(engine: dict[str, Any]) -> dict[str, str]:
    """Take ``--lora-modules name=path ...`` out of the engine args, as ``{name: path}``."""
    adapters = {}
    for module in _as_list(engine.pop("lora_modules", [])):
        name, eq, path = str(module).partition("=")
        if not eq or not name or not path:
            raise EntrypointError(
                f"VLLM_ARGS: --lora-modules {module!r}: write each adapter as name=path"
            )
        adapters[name] = path
    return adapters


def _config_file_data(env: Mapping[str, str], *, engine: dict[str, Any], tp: str) -> dict[str, Any]:
    """``TSVLLM_CONFIG`` as data, with the engine args and tensor parallelism of ``env``."""
    from tsvllm.config import load_model_config

    data = load_model_config(env["TSVLLM_CONFIG"]).model_dump(
        mode="json", exclude_none=True, by_alias=True
    )
    data["handler"]["vllm_engine_config"].update(engine)
    if tp:
        engine_cfg = data["handler"]["vllm_engine_config"]
        engine_cfg["tensor_parallel_size"] = _int_var(env, "TENSOR_PARALLEL_SIZE", 1)
        level = engine_cfg["tensor_parallel_size"] * engine_cfg.get("pipeline_parallel_size", 1)
        if data.get("deviceType") == "gpu" and level > 1:
            data.update(parallelType="custom", parallelLevel=level)
    return data


def _placement(
    env: Mapping[str, str], *, engine: Mapping[str, Any], tp: str, gpus: int | None
) -> Any:
    """Device and tensor parallelism from ``TSVLLM_DEVICE``/``TENSOR_PARALLEL_SIZE``."""
    from tsvllm.host.launcher import LaunchError, Placement, count_gpus, place

    device = env.get("TSVLLM_DEVICE", "auto").strip() or "auto"
    gpus = count_gpus(env) if gpus is None else gpus
    nnodes = engine.get("nnodes") or 1
    if nnodes != 1 or engine.get("distributed_executor_backend") == "ray":
        # one engine over several nodes: this node holds only its share of the devices
        # (TP x PP / nnodes, checked by the model config and the worker's GPU placement)
        if device == "auto":
            device = "gpu" if gpus else "cpu"
        return Placement(device, _int_var(env, "TENSOR_PARALLEL_SIZE", 1))
    try:
        return place(device=device, tensor_parallel_size=tp or "auto", gpus=gpus)
    except LaunchError as exc:  # it names the launcher's flags: name our variables
        msg = str(exc).replace("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE")
        raise EntrypointError(msg.replace("--device", "TSVLLM_DEVICE")) from None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def check_engine_args(cfg: Any) -> None:
    """vLLM's own parser on the engine args (VLLM_ARGS ends up here)."""
    from tsvllm.engine.vllm_engine import EngineArgsError, handler_argv, parse_engine_args

    try:
        parse_engine_args(handler_argv(cfg.handler))
    except EngineArgsError as exc:
        raise EntrypointError(f"VLLM_ARGS: {exc}") from None


def check_shared_memory(cfg: Any, env: Mapping[str, str], *, shm: Path = Path("/dev/shm")) -> None:
    """Enough /dev/shm for vLLM's message queues, or stop now naming the fix: a container
    gets 64 MB by default, and vLLM would fail its start after the engine's load."""
    from tsvllm.engine.vllm_engine import shm_needed_bytes

    local = cfg.handler.parallel_per_node
    if not shm.is_dir() or (cfg.deviceType == "gpu" and local == 1):
        return  # vLLM runs a single GPU in one process: no queues
    need = shm_needed_bytes(local_workers=local, environ=env)
    free = shutil.disk_usage(shm).free
    if free < need:
        raise EntrypointError(
            f"{shm} has {free >> 20} MiB free; vLLM's message queues need {need >> 20} MiB "
            f"for {local} engine worker(s) here: give the container more shared memory "
            "(docker/podman run --shm-size=1g; Kubernetes: an emptyDir with medium: Memory "
            "mounted at /dev/shm, as tsvllm deploy k8s writes)"
        )


# -- TorchServe settings --------------------------------------------------------------


def inference_port(env: Mapping[str, str]) -> int:
    for name in ("AIP_HTTP_PORT", "PORT"):
        raw = env.get(name, "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 65533:
                raise EntrypointError(f"{name}={raw!r} is not a port (1-65533)")
            return int(raw)
    return INFERENCE_PORT


def check_vertex_routes(env: Mapping[str, str]) -> None:
    """Vertex AI sends traffic to AIP_PREDICT_ROUTE/AIP_HEALTH_ROUTE: they must be ours."""

    wanted = {
        "AIP_PREDICT_ROUTE": ((VERTEX_PREDICT_ROUTE,), "containerSpec.predictRoute"),
        "AIP_HEALTH_ROUTE": ((READINESS_ROUTE, LIVENESS_ROUTE), "containerSpec.healthRoute"),
    }
    for name, (served, field) in wanted.items():
        value = env.get(name, "").strip()
        if value and value not in served:
            raise EntrypointError(
                f"{name}={value}: this container serves {' or '.join(served)} (TorchServe's "
                f"routes are fixed); set {field} to {served[0]} (tsvllm deploy vertex does)"
            )


def torchserve_settings(env: Mapping[str, str]) -> tuple[Any, dict[str, str], bool]:
    """``(ports, config.properties overrides, token_auth)`` for the container."""
    from tsvllm.host.launcher import ports_for

    ports = ports_for(inference_port(env))
    # The inference API is the container's one public door: it must listen on 0.0.0.0
    # (tests set TSVLLM_BIND=127.0.0.1). Management stays on loopback, and metrics too
    # unless a scraper must reach them (the Kubernetes assets set TSVLLM_METRICS_BIND).
    # The size caps are ts_config_text's (tsvllm.contract), as under tsvllm launch; the
    # frontend's default response timeout follows the model's (TSVLLM_RESPONSE_TIMEOUT).
    bind = env.get("TSVLLM_BIND", "0.0.0.0").strip() or "0.0.0.0"
    metrics_bind = env.get("TSVLLM_METRICS_BIND", "127.0.0.1").strip() or "127.0.0.1"
    extra = {
        "inference_address": f"http://{bind}:{ports.inference}",
        "metrics_address": f"http://{metrics_bind}:{ports.metrics}",
        "default_response_timeout": str(
            _int_var(env, "TSVLLM_RESPONSE_TIMEOUT", RESPONSE_TIMEOUT_S)
        ),
    }
    return ports, extra, not _truthy(env.get("TSVLLM_DISABLE_TOKEN_AUTH"))


def workdir(env: Mapping[str, str]) -> Path:
    default = Path(tempfile.gettempdir()) / "tsvllm"
    return Path(env.get("TSVLLM_WORKDIR", "").strip() or default).resolve()


def _server(env: Mapping[str, str], *, models: list[str]) -> Any:
    from tsvllm.host.torchserve import TorchServe

    ports, extra, token_auth = torchserve_settings(env)
    root = workdir(env)
    return TorchServe(
        workdir=root / "ts",
        model_store=root / "model_store",
        models=models,
        ports=ports,
        auth="key" if token_auth else "off",
        config_extra=extra,
    )


# -- running --------------------------------------------------------------------------


def prepare(env: Mapping[str, str], *, master_addr: str | None = None) -> tuple[Any, Path]:
    """Check the environment, get the model, write the config and build the archive."""
    from tsvllm.host.archive import DEFAULT_HANDLER, build_archive

    check_vertex_routes(env)
    torchserve_settings(env)  # port and number checks before any download
    root = workdir(env)
    cfg, config_path = write_config(env, root / "model-config.yaml", master_addr=master_addr)
    handler = env.get("TSVLLM_HANDLER", "").strip() or str(DEFAULT_HANDLER)
    if (cfg.handler.rag or cfg.handler.guards) and not env.get("TSVLLM_HANDLER"):
        handler = str(Path(handler).parent / "rag_guard_handler.py")
    build_archive(
        config_path, name=MODEL_NAME, export_path=root / "model_store", handler=handler, force=True
    )
    return cfg, config_path


def write_config(
    env: Mapping[str, str], path: Path, *, master_addr: str | None = None
) -> tuple[Any, Path]:
    """Get the model and write the model config the environment describes to ``path``."""
    from tsvllm.config import dump_model_config

    root = workdir(env)
    cache = Path(env.get("TSVLLM_MODEL_CACHE", "").strip() or root / "models")
    model = resolve_model(env, cache=cache)
    cfg = model_config(env, model=model, master_addr=master_addr)
    check_engine_args(cfg)
    check_shared_memory(cfg, env)
    return cfg, dump_model_config(cfg, path)


def run_worker_node(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``worker-node``: fetch the model, write the config, run vLLM's headless workers."""
    from tsvllm.config import ConfigError
    from tsvllm.host import worker_node

    try:
        _, config = write_config(env, Path(args.config), master_addr=args.master_addr)
    except (EntrypointError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return worker_node.run(str(config), node_rank=args.node_rank, master_addr=args.master_addr)
    except ConfigError as exc:  # e.g. a node rank outside 1..nnodes-1: before vLLM starts
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from tsvllm.host.archive import ArchiveError
    from tsvllm.host.launcher import serve_foreground
    from tsvllm.host.shutdown import drain_timeout

    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    if args.mode == "worker-node":
        return run_worker_node(args, env)
    if args.probe:
        return probe(args.probe, env)
    try:
        drain_timeout(env)  # a bad TSVLLM_DRAIN_TIMEOUT_S fails before any download
        cfg, _ = prepare(env, master_addr=args.master_addr)
        drain_s = drain_timeout(env, configured=cfg.handler.drain_timeout_s)
        ts = _server(env, models=[MODEL_NAME])
    except (EntrypointError, ArchiveError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    def announce() -> None:
        bind = ts.config_extra["inference_address"]
        auth = (
            f"on (key in {ts.key_file})"
            if ts.auth == "key"
            else ("off (the platform authenticates)")
        )
        print(f"{PROG}: ready. OpenAI base URL {bind}{OPENAI_BASE}; token auth {auth}", flush=True)
        _announce_routes(ts, env)

    return serve_foreground(
        ts,
        model=MODEL_NAME,
        startup_timeout=cfg.startupTimeout,
        on_ready=announce,
        prog=PROG,
        drain_timeout_s=drain_s,
    )


def _parser() -> argparse.ArgumentParser:
    from tsvllm.host import worker_node

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", choices=["ready", "alive"], help="exec probe: exit 0 if OK")
    p.add_argument(
        "--master-addr",
        help="the leader of an engine over several nodes (VLLM_ARGS has --nnodes): the "
        "address the other nodes reach it at (Kubernetes: $(LWS_LEADER_ADDRESS))",
    )
    modes = p.add_subparsers(dest="mode")
    node = worker_node.add_parser(modes)
    node.description += (
        " In the container the model is fetched and the config written to --config from "
        "the environment first, as the leader does."
    )
    return p


def _announce_routes(ts: Any, env: Mapping[str, str]) -> None:
    """Say what a pooling model serves (it has no completions or chat), and warn when
    Vertex AI would send predictions to a route the model does not serve."""
    from tsvllm.host.launcher import served_routes

    routes = served_routes(ts, MODEL_NAME)
    if routes is None:
        return
    if "/v1/chat/completions" not in routes:
        print(
            f"{PROG}: a pooling model (no completions or chat); it serves {', '.join(routes)} "
            f"under {PREFIX}",
            flush=True,
        )
    predict = env.get("AIP_PREDICT_ROUTE", "").strip()
    if predict and predict.removeprefix(PREFIX) not in routes:
        print(
            f"{PROG}: warning: AIP_PREDICT_ROUTE={predict} is not served by this model "
            "(Vertex AI's predict envelope generates text); call its routes directly",
            file=sys.stderr,
            flush=True,
        )


def probe(kind: str, env: Mapping[str, str]) -> int:
    """Exec probe: ``ready`` = the model serves (:meth:`TorchServe.probe`); ``alive`` =
    the frontend answers (``/alive``)."""
    from tsvllm.host.torchserve import ServeError

    ts = _server(env, models=[])
    if kind == "ready":
        try:
            return 0 if ts.probe(MODEL_NAME) else 1
        except ServeError as exc:  # the engine can never start: say why
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
    try:
        status, _ = ts._get(ts.inference_url + LIVENESS_ROUTE, key=ts.keys().get("inference"))
    except (OSError, ValueError):
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
