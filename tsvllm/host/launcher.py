"""Quick start that replaces ``ts.llm_launcher``: flags → config → archive → TorchServe.

``tsvllm launch --model-id DIR_OR_HF_ID`` (also ``python -m tsvllm.host.launcher``) takes
ts.llm_launcher's flags with the same meaning (kebab-case as every tsvllm flag; its
underscore spellings, ``--model_id``, ``--vllm_engine.max_model_len``, ..., work too),
writes a validated model config, builds the archive, starts TorchServe, waits until the
model answers, prints the OpenAI base URL, an example ``curl`` and where the auth key is,
and stays in the foreground. The example fits the model: a chat request for a model that
generates, an embeddings request for a pooling model (e.g. a sentence-embedding folder;
vLLM decides, or ``runner: pooling`` in the config's ``vllm_engine_config``), with the
routes it serves.

SIGTERM (or Ctrl-C) drains first (:mod:`tsvllm.host.shutdown`): new requests get 503 with
``Retry-After`` while the running ones finish, for at most ``--drain-timeout`` seconds
(``TSVLLM_DRAIN_TIMEOUT_S``, default 30); what still runs then is ended cleanly (a stream
gets an error event and ``[DONE]``). Then TorchServe and every engine process stop. A
second signal stops at once. Exit status: 0 when every request finished, 3 when requests
had to be ended, 1 when TorchServe failed, 2 for a bad flag.

The ports (``--port P``, :func:`listened_ports`): inference on P, metrics on P+2,
TorchServe's gRPC on P+3 and P+4 (7070 and 7071 for P = 8080); the management API on a
Unix socket in the server's private work directory, or on P+1 when token auth is off.
Only those are checked before the start; a busy one stops the launch with its number.

Device and tensor parallelism are detected, not guessed: ``--device auto`` uses the GPUs
that are visible (``CUDA_VISIBLE_DEVICES`` honoured) and falls back to CPU;
``--tensor-parallel-size auto`` uses all visible GPUs (1 on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tsvllm.config import ModelConfig, dump_model_config, validate_model_config
from tsvllm.contract import RESPONSE_TIMEOUT_S, STARTUP_TIMEOUT_S


class LaunchError(RuntimeError):
    """The launch cannot proceed (the message says what to fix)."""


# -- device and parallelism -----------------------------------------------------------


def count_gpus(
    env: Mapping[str, str] | None = None, *, probe: Callable[[], int] | None = None
) -> int:
    """Visible GPUs: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        if "-1" in ids:  # CUDA ignores everything from the first invalid id on
            ids = ids[: ids.index("-1")]
        return len(ids)
    return (probe or _nvidia_smi_count)()


def _nvidia_smi_count() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" | "gpu"
    tensor_parallel_size: int


def place(*, device: str, tensor_parallel_size: str | int, gpus: int) -> Placement:
    """Resolve ``--device`` and ``--tensor-parallel-size`` against the visible GPUs."""
    if device not in ("auto", "cpu", "gpu"):
        raise LaunchError(f"--device {device!r}: use auto, cpu or gpu")
    if device == "auto":
        device = "gpu" if gpus > 0 else "cpu"
    if device == "gpu" and gpus == 0:
        raise LaunchError("--device gpu, but no GPU is visible (check CUDA_VISIBLE_DEVICES)")
    if tensor_parallel_size == "auto":
        tp = gpus if device == "gpu" else 1
    else:
        try:
            tp = int(tensor_parallel_size)
        except ValueError:
            raise LaunchError(
                f"--tensor-parallel-size {tensor_parallel_size!r}: use auto or a number"
            ) from None
        if tp < 1:
            raise LaunchError("--tensor-parallel-size must be at least 1")
        if device == "cpu" and tp != 1:
            raise LaunchError("--tensor-parallel-size > 1 needs GPUs; use --device gpu")
        if device == "gpu" and tp > gpus:
            raise LaunchError(f"--tensor-parallel-size {tp}, but only {gpus} GPU(s) are visible")
    return Placement(device=device, tensor_parallel_size=tp)


# -- the model config -----------------------------------------------------------------


def model_config_from_flags(
    *,
    model_path: str,
    model_name: str,
    placement: Placement,
    engine: Mapping[str, Any],
    startup_timeout: int,
    rag_index: str | None = None,
    guards: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """The model config ts.llm_launcher would have written, but valid for the device."""
    engine_args: dict[str, Any] = {k: v for k, v in engine.items() if v is not None}
    data: dict[str, Any] = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "startupTimeout": startup_timeout,
        "responseTimeout": RESPONSE_TIMEOUT_S,
        "deviceType": placement.device,
        "asyncCommunication": True,
        "handler": {"model_path": model_path, "served_model_name": [model_name]},
    }
    tp = placement.tensor_parallel_size
    if placement.device == "cpu":
        data["handler"]["env"] = {
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")
        }
        engine_args.setdefault("enforce_eager", True)
        if tp > 1:  # one engine over several nodes (the config checks it has nnodes)
            engine_args["tensor_parallel_size"] = tp
    else:
        engine_args["tensor_parallel_size"] = tp
        # the GPUs of this node: all of TP x PP, or their share when the engine spans nodes
        pp = int(engine_args.get("pipeline_parallel_size", 1))
        per_node = tp * pp // int(engine_args.get("nnodes") or 1)
        if per_node > 1:
            data["parallelType"] = "custom"
            data["parallelLevel"] = per_node
    data["handler"]["vllm_engine_config"] = engine_args
    if rag_index:
        data["handler"]["rag"] = {"index": rag_index}
    if guards:
        data["handler"]["guards"] = dict(guards)
    return validate_model_config(data, source="tsvllm launch flags")


DEFAULT_GUARDS = {
    "pii": {"mode": "redact", "stages": ["input", "output"]},
    "secrets": {"mode": "block"},
    "injection": {"mode": "block", "stages": ["input", "context"]},
}


def load_guards(value: str | None) -> dict[str, Any] | None:
    """``--guards default`` or a YAML file holding a ``handler.guards`` section."""
    if not value:
        return None
    if value == "default":
        return dict(DEFAULT_GUARDS)
    path = Path(value)
    if not path.is_file():
        raise LaunchError(f"--guards {value}: not 'default' and no such file")
    data = yaml.safe_load(path.read_text()) or {}
    return data.get("guards", data)


# -- running --------------------------------------------------------------------------


#: what ``--help`` and the README say about the ports (:func:`listened_ports` is the truth)
PORT_HELP = (
    "inference port P (default 8080); metrics on P+2; TorchServe's gRPC on P+3 and P+4 "
    "(7070 and 7071 when P is 8080); the management API on the Unix socket "
    "MODEL_STORE/.torchserve/management.sock, or on TCP P+1 with --disable-token-auth"
)


def ports_for(port: int) -> Any:
    """TorchServe's ports for inference port ``port``: management ``port``+1, metrics +2,
    gRPC inference and management +3 and +4; TorchServe's defaults for 8080 (gRPC 7070, 7071)."""
    from tsvllm.host.torchserve import Ports

    if port == 8080:
        return Ports()
    return Ports(port, port + 1, port + 2, port + 3, port + 4)


def listened_ports(ports: Any, *, management_tcp: bool) -> dict[int, str]:
    """The TCP ports a launched TorchServe listens on (127.0.0.1), each with what it serves.

    The management API is a Unix socket unless token auth is off (``management_tcp``;
    :attr:`TorchServe.management_socket <tsvllm.host.torchserve.TorchServe.management_socket>`).
    TorchServe's own metrics listen on a loopback port chosen free at start, behind the
    metrics port (:mod:`tsvllm.host.metrics_proxy`); the workers talk to the frontend over
    Unix sockets.
    """
    listened = {
        ports.inference: "the inference API",
        ports.metrics: "metrics",
        ports.grpc_inference: "TorchServe's gRPC inference API",
        ports.grpc_management: "TorchServe's gRPC management API",
    }
    if management_tcp:
        listened[ports.management] = "the management API (token auth is off)"
    return listened


def port_is_free(port: int) -> bool:
    """True when a server can listen on 127.0.0.1:``port`` now.

    Binds as the servers do, with ``SO_REUSEADDR`` (Java's and Python's HTTP servers set
    it): a port whose last server closed its connections first is left in TIME_WAIT, and
    is free for them although a plain ``bind`` refuses it.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports_free(port: int, *, token_auth: bool) -> Any:
    """The ports for ``--port port`` (:func:`ports_for`) when every one launch listens on
    (:func:`listened_ports`) is free; else LaunchError naming the first busy one."""
    if not 1 <= port <= 65535 - 4:
        raise LaunchError(f"--port {port}: use 1 to 65531 (the next four ports serve too)")
    ports = ports_for(port)
    for number, serves in listened_ports(ports, management_tcp=not token_auth).items():
        if not port_is_free(number):
            raise LaunchError(
                f"port {number} on 127.0.0.1 is in use; --port {port} puts {serves} there "
                "(another TorchServe? `torchserve --stop`, or pick another --port)"
            )
    return ports


def write_handler_auth_config(
    run_dir: str | Path,
    *,
    model_store: str | Path,
    ports: Any = None,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write ``run_dir/config.properties`` for a TorchServe started with a plain
    ``torchserve --start`` whose inference key the handler checks (the README quick start);
    return its path.

    It is ``docker/config.properties`` with two changes. TorchServe's token auth is off: its
    keys expire after ``token_expiration_min`` (60 minutes by default), after which the same
    request gets its 400 ``InvalidKeyException``, a body no handler can change. And the
    management API, which the handler does not guard, listens on the Unix socket
    ``run_dir/management.sock`` (``run_dir`` is made 0700: only its owner can connect) instead
    of TCP. Start TorchServe with ``TSVLLM_API_KEY_FILE`` naming a keys file (``tsvllm key
    --new --file F`` writes one): the handler then checks every request's key (401 with
    OpenAI's body), and the key works for as long as the server runs.
    """
    from tsvllm.host.torchserve import Ports, ts_config_text

    run = Path(run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    path = run / "config.properties"
    path.write_text(
        ts_config_text(
            ports=ports or Ports(),
            model_store=Path(model_store).resolve(),
            token_auth=False,
            management_socket=run / "management.sock",
            extra=extra,
        )
    )
    return path


#: ts.llm_launcher's spelling of each flag launch mirrors: accepted, not shown in ``--help``
LLM_LAUNCHER_ALIASES = {
    "--model-id": "--model_id",
    "--model-name": "--model_name",
    "--model-store": "--model_store",
    "--disable-token-auth": "--disable_token_auth",
    "--vllm-engine.max-num-seqs": "--vllm_engine.max_num_seqs",
    "--vllm-engine.max-model-len": "--vllm_engine.max_model_len",
    "--vllm-engine.download-dir": "--vllm_engine.download_dir",
    "--startup-timeout": "--startup_timeout",
}


def _add(p: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """``flag`` (kebab-case, shown in ``--help``) and its ts.llm_launcher alias, if any."""
    p.add_argument(flag, **kwargs)
    alias = LLM_LAUNCHER_ALIASES.get(flag)
    if alias is not None:  # same dest; the shown flag's default stands
        hidden = {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
        dest = kwargs.get("dest", flag[2:].replace("-", "_"))
        p.add_argument(alias, **{**kwargs, "dest": dest, **hidden})


def build_parser() -> argparse.ArgumentParser:
    """``tsvllm launch``'s flags (:func:`parse_args` checks what they must say together)."""
    p = argparse.ArgumentParser(
        prog="tsvllm launch",
        description=__doc__.split("\n\n")[0],
        epilog="ts.llm_launcher's underscore spellings of its flags are accepted too: "
        + ", ".join(LLM_LAUNCHER_ALIASES.values()),
        allow_abbrev=False,
    )
    # ts.llm_launcher's flags, same meaning
    _add(p, "--model-id", help="local model folder or Hugging Face id")
    _add(p, "--model-name", default="model", help="TorchServe model name (URL)")
    _add(p, "--model-store", default="model_store", help="where artifacts go")
    _add(p, "--disable-token-auth", action="store_true", help="turn token auth off")
    engine = "vLLM's engine argument"
    _add(p, "--vllm-engine.max-num-seqs", dest="max_num_seqs", type=int, default=256, help=engine)
    _add(p, "--vllm-engine.max-model-len", dest="max_model_len", type=int, help=engine)
    _add(p, "--vllm-engine.download-dir", dest="download_dir", help=engine)
    _add(p, "--startup-timeout", type=int, default=STARTUP_TIMEOUT_S, help="seconds to load")
    _add(p, "--dtype", default="auto", help="bfloat16, float16, float32 or auto")
    # ours
    _add(p, "--config", help="a model-config.yaml to use instead of the flags above")
    _add(p, "--handler", help="handler entry file (default handlers/vllm_handler.py)")
    _add(p, "--rag-index", help="RAG index folder (tsvllm index); enables RAG")
    _add(p, "--guards", help="'default' or a YAML file with a guards section")
    _add(p, "--device", default="auto", choices=["auto", "cpu", "gpu"])
    _add(p, "--tensor-parallel-size", default="auto", help="auto or a number")
    _add(p, "--port", type=int, default=8080, metavar="P", help=PORT_HELP)
    _add(p, "--keep-artifacts", action="store_true", help="keep config and archive")
    _add(
        p,
        "--drain-timeout",
        metavar="S",
        help="on SIGTERM, seconds running requests get to finish before they are ended "
        "(default: $TSVLLM_DRAIN_TIMEOUT_S, else 30; 0: end them at once)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.model_id and not args.config:
        p.error("give --model-id (a model folder or HF id) or --config")
    return args


def prepare(args: argparse.Namespace, *, gpus: int | None = None) -> tuple[Path, str]:
    """Write the config and build the archive; returns (config path, handler file)."""
    from tsvllm.config import load_model_config
    from tsvllm.host.archive import DEFAULT_HANDLER, HF_ID, build_archive

    store = Path(args.model_store)
    guards = load_guards(args.guards)
    handler = args.handler
    if args.config:
        cfg = load_model_config(args.config)
    else:
        model_path = args.model_id
        local = Path(model_path).expanduser()
        if local.exists() or not HF_ID.match(model_path):
            if not (local / "config.json").is_file():
                raise LaunchError(
                    f"--model-id {model_path}: no model folder there (no config.json) and not "
                    "a Hugging Face id like org/name"
                )
            model_path = str(local.resolve())
        placement = place(
            device=args.device,
            tensor_parallel_size=args.tensor_parallel_size,
            gpus=count_gpus() if gpus is None else gpus,
        )
        engine = {
            "max_num_seqs": args.max_num_seqs,
            "max_model_len": args.max_model_len,
            "download_dir": args.download_dir,
            "dtype": args.dtype,
        }
        cfg = model_config_from_flags(
            model_path=model_path,
            model_name=args.model_name,
            placement=placement,
            engine=engine,
            startup_timeout=args.startup_timeout,
            rag_index=str(Path(args.rag_index).resolve()) if args.rag_index else None,
            guards=guards,
        )
    if (cfg.handler.rag or cfg.handler.guards) and not handler:
        handler = str(DEFAULT_HANDLER.parent / "rag_guard_handler.py")
    store.mkdir(parents=True, exist_ok=True)
    config_path = dump_model_config(cfg, store / f"{args.model_name}-model-config.yaml")
    build_archive(config_path, name=args.model_name, export_path=store, handler=handler, force=True)
    return config_path, handler or str(DEFAULT_HANDLER)


def main(argv: list[str] | None = None) -> int:
    from tsvllm.config import load_model_config
    from tsvllm.host.shutdown import drain_timeout
    from tsvllm.host.torchserve import TorchServe

    args = parse_args(argv)
    try:
        drain_timeout(os.environ, flag=args.drain_timeout)  # a bad value fails first
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise LaunchError("Java not found: TorchServe needs Java 11+ (JDK 17 tested)")
        ports = check_ports_free(args.port, token_auth=not args.disable_token_auth)
        config_path, _ = prepare(args)
        configured = load_model_config(config_path).handler.drain_timeout_s
        drain_s = drain_timeout(os.environ, flag=args.drain_timeout, configured=configured)
    except (LaunchError, ValueError) as exc:
        print(f"tsvllm launch: {exc}", file=sys.stderr)
        return 2

    store = Path(args.model_store).resolve()
    ts = TorchServe(
        workdir=store / ".torchserve",
        model_store=store,
        models=[args.model_name],
        ports=ports,
        auth="off" if args.disable_token_auth else "key",
    )
    try:
        return serve_foreground(
            ts,
            model=args.model_name,
            startup_timeout=args.startup_timeout,
            on_ready=lambda: _announce(ts, args.model_name, config_path),
            prog="tsvllm launch",
            drain_timeout_s=drain_s,
        )
    finally:
        if not args.keep_artifacts:
            _remove_artifacts(store, args.model_name, config_path)


def serve_foreground(
    ts: Any,
    *,
    model: str,
    startup_timeout: float,
    on_ready: Callable[[], None],
    prog: str,
    drain_timeout_s: float = 30.0,
) -> int:
    """Start ``ts``, wait for ``model``, stay in the foreground until SIGTERM/SIGINT.

    The first signal once the model serves drains (:func:`tsvllm.host.shutdown.drain_server`:
    503 to new requests, running ones get ``drain_timeout_s`` seconds, then are ended
    cleanly); a second one stops at once. Whatever happens (a signal, a failed start,
    TorchServe exiting), TorchServe and every engine process are stopped before this
    returns. Returns the exit status: 0 after a signal when every request finished, 3 when
    requests had to be ended, 1 when TorchServe failed or exited on its own, or at once
    when the worker answers that its engine can never start (the reason is printed;
    :meth:`probe <tsvllm.host.torchserve.TorchServe.probe>`).
    """
    from tsvllm.host.torchserve import ServeError

    signals: list[int] = []

    def record(signum: int, frame: Any) -> None:
        signals.append(signum)

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    code = 0
    try:
        _start_and_wait(ts, model=model, timeout=startup_timeout, prog=prog, signals=signals)
        on_ready()
        while not signals and ts.process is not None and ts.process.poll() is None:
            time.sleep(0.1)  # a drain starts within 0.1 s of SIGTERM
        if signals:
            code = _drain(ts, signals=signals, timeout_s=drain_timeout_s, prog=prog)
        else:
            print(f"{prog}: TorchServe exited unexpectedly", file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        pass
    except ServeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = 1
    finally:
        print(f"{prog}: stopping TorchServe", flush=True)
        started = time.monotonic()
        ts.stop()
        print(f"{prog}: stopped in {time.monotonic() - started:.1f} s", flush=True)
    return code


def _start_and_wait(ts: Any, *, model: str, timeout: float, prog: str, signals: list[int]) -> None:
    """Start TorchServe and wait until ``model`` serves; a signal meanwhile stops at once
    (KeyboardInterrupt): nothing can be running yet."""
    ts.start()
    print(f"{prog}: starting TorchServe (logs in {ts.workdir / 'logs'})", flush=True)
    last = [0.0]

    def progress(elapsed: float) -> None:
        if signals:
            raise KeyboardInterrupt
        if elapsed - last[0] >= 10:
            last[0] = elapsed
            print(f"{prog}: loading the model... {elapsed:.0f}s", flush=True)

    ts.wait_ready(model, timeout=timeout, on_wait=progress)


def _drain(ts: Any, *, signals: list[int], timeout_s: float, prog: str) -> int:
    """Drain after the first signal; the exit status (tsvllm.host.shutdown's codes)."""
    from tsvllm.host.shutdown import drain_server

    def say(message: str) -> None:
        print(f"{prog}: {message}", flush=True)

    result = drain_server(ts, timeout_s=timeout_s, interrupted=lambda: len(signals) > 1, say=say)
    return result.exit_code


#: a route no model serves: its 404 lists the routes the model does serve
_NO_ROUTE = "tsvllm-routes"
_SERVES = "this model serves "


def served_routes(ts: Any, model: str, *, version: str = "1.0") -> list[str] | None:
    """The routes ``model`` serves (``/v1/embeddings``, ...), from the 404 its handler answers
    for a route that does not exist (it lists them); None when the answer says nothing."""
    url = f"{ts.inference_url}/predictions/{model}/{version}/{_NO_ROUTE}"
    try:
        status, body = ts._get(url, key=ts.keys().get("inference"))
        message = json.loads(body)["error"]["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if status != 404 or _SERVES not in message:
        return None
    return [r.strip() for r in message.split(_SERVES, 1)[1].split(",") if r.strip()]


def example_request(routes: list[str] | None, served: str) -> tuple[str, dict[str, Any]]:
    """``(route under v1/, body)`` of the example request for a model serving ``routes``:
    chat for a model that generates (or when the routes are unknown), else embeddings."""
    if routes is not None and "/v1/chat/completions" not in routes:
        if "/v1/embeddings" in routes:
            return "embeddings", {"model": served, "input": ["Hello", "Bonjour"]}
        if "/v1/score" in routes:
            return "score", {"model": served, "text_1": "Hello", "text_2": ["Hi", "Bye"]}
    return "chat/completions", {"model": served, "messages": [{"role": "user", "content": "Hello"}]}


def _announce(ts: Any, model: str, config_path: Path) -> None:
    url = f"{ts.inference_url}/predictions/{model}/1.0/v1"
    keys = ts.keys()
    auth = f' -H "Authorization: Bearer {keys["inference"]}"' if keys else ""
    handler = yaml.safe_load(config_path.read_text())["handler"]
    served = (handler.get("served_model_name") or [handler["model_path"]])[0]
    routes = served_routes(ts, model)
    route, body = example_request(routes, served)
    example = (
        f"  curl {url}/{route}{auth} -H 'Content-Type: application/json' -d '{json.dumps(body)}'\n"
    )
    if routes is not None and "/v1/chat/completions" not in routes:
        base = url.removesuffix("/v1")
        example += (
            f"  a pooling model (no completions or chat); its routes under {base}: "
            f"{', '.join(routes)}\n"
        )
    print(
        f"tsvllm launch: ready. OpenAI base URL: {url}\n"
        + (
            f"  auth: token auth is on; the key is in {ts.key_file} "
            f"(inference key {keys['inference']}), valid while this server runs (print it "
            f"again: tsvllm key --file {ts.key_file}); a request without it gets 401\n"
            f"  management API: Unix socket {ts.management_socket} (owner only)\n"
            if keys
            else "  auth: token auth is off; management API: "
            f"http://127.0.0.1:{ts.ports.management} (no key)\n"
        )
        + example
        + "  Ctrl-C or SIGTERM drains (running requests finish, new ones get 503), then stops "
        "TorchServe and every engine process; a second Ctrl-C stops at once.\n"
        f"  drain one model before unregistering it: tsvllm drain --control-dir {ts.control_dir} "
        f"--model {model}",
        flush=True,
    )


def _remove_artifacts(store: Path, name: str, config_path: Path) -> None:
    target = store / name
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    config_path.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
