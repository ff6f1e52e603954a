"""Start and stop a TorchServe we own: config, readiness, clean stop, no orphans.

Each :class:`TorchServe` runs in its own work directory with its own short ``TMPDIR``:
TorchServe keeps its pid file in the temp dir and ``key_file.json`` in its working
directory, and each server gets its own worker socket names, so two servers on one
machine (tests, the quick start) never collide.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tsvllm.auth import KEY_FILE_ENV, write_key_file
from tsvllm.contract import (
    FRONTEND_RESPONSE_TIMEOUT_S,
    GRPC_INFERENCE_PORT,
    GRPC_MANAGEMENT_PORT,
    INFERENCE_PORT,
    MANAGEMENT_PORT,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    METRICS_PORT,
)
from tsvllm.drain import CONTROL_DIR_ENV
from tsvllm.errors import ENGINE_START_FAILED
from tsvllm.host.frontend_plugin import plugin_dir
from tsvllm.metrics_files import METRICS_DIR_ENV

#: who checks the inference key: the handler (401, tsvllm.auth), TorchServe's frontend
#: (its token auth, 400 on a bad key), or nobody
Auth = Literal["key", "torchserve", "off"]


#: the Java frontend's JVM options (TorchServe's default heap is 1/4 of RAM)
JVM_ARGS = (
    "-Xms32m -Xmx384m -XX:+UseSerialGC -XX:MaxMetaspaceSize=128m -XX:ReservedCodeCacheSize=64m "
    "-Xss512k -Dio.netty.allocator.numDirectArenas=2 -Dio.netty.allocator.numHeapArenas=2 "
    "-XX:+ExitOnOutOfMemoryError"
)


#: config.properties ``job_queue_size``: how many requests per model the frontend queues
JOB_QUEUE_SIZE = 1024

#: the frontend's log4j2 settings: TorchServe's, at info instead of debug (docs/PERFORMANCE.md)
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")


class ServeError(RuntimeError):
    """TorchServe could not be started or did not become ready (message says why)."""


def engine_start_failure(status: int, body: str) -> str | None:
    """The reason in a reply saying the engine can never start, else None.

    The worker answers every request with 500 and an OpenAI error whose code is
    ``engine_start_failed`` once the engine failed for a reason no retry fixes (vLLM
    rejected the engine args, the model cannot generate text, a bad hook config).
    """
    if status != 500:
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None  # not our JSON: TorchServe's own 500, or a worker that crashed
    if not isinstance(error, dict) or error.get("code") != ENGINE_START_FAILED:
        return None
    return str(error.get("message") or "the engine cannot start")


@dataclass(frozen=True)
class Ports:
    inference: int = INFERENCE_PORT
    management: int = MANAGEMENT_PORT
    metrics: int = METRICS_PORT
    grpc_inference: int = GRPC_INFERENCE_PORT
    grpc_management: int = GRPC_MANAGEMENT_PORT

    @classmethod
    def free(cls) -> Ports:
        """Five currently free loopback ports."""
        socks = []
        try:
            for _ in range(5):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


def ts_config_text(
    *,
    ports: Ports = Ports(),
    model_store: str | Path | None = None,
    token_auth: bool = True,
    management_socket: str | Path | None = None,
    max_request_size: int = MAX_REQUEST_BYTES,
    initial_worker_port: int | None = None,
    netty_threads: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """``config.properties`` with our defaults: loopback only, token auth on.

    ``management_socket`` puts the management API on that Unix socket instead of a TCP
    port: only its owner can connect (connecting needs write permission on the file).
    ``netty_threads`` sets the frontend's HTTP and worker-socket threads (default:
    TorchServe's, one each per core); see :func:`frontend_threads`.
    """
    management = f"http://127.0.0.1:{ports.management}"
    if management_socket is not None:
        management = f"unix:{management_socket}"
    props = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": management,
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(ports.grpc_management),
        "disable_token_authorization": "false" if token_auth else "true",
        "enable_model_api": "false",
        "install_py_dep_per_model": "false",
        # the frontend's hard caps (its 413 has no OpenAI body): above the handler's own
        # limit (handler.max_body_bytes, 1 MiB by default), which answers in OpenAI's shape
        "max_request_size": str(max_request_size),
        "max_response_size": str(MAX_RESPONSE_BYTES),
        "metrics_mode": "prometheus",
        "model_metrics_auto_detect": "true",
        "default_response_timeout": str(FRONTEND_RESPONSE_TIMEOUT_S),
        # requests the frontend holds for a model beyond those its worker has taken: past
        # it, TorchServe answers 503 (its own body). Its default of 100 turns a burst of 256
        # streams into 84 failures; vLLM's server queues without limit.
        "job_queue_size": str(JOB_QUEUE_SIZE),
        # the frontend only routes bytes: a small heap and serial GC keep its RSS ~170 MB
        # instead of ~310 MB after load, at the same throughput (docs/PERFORMANCE.md)
        "vmargs": JVM_ARGS,
        # tsvllm's frontend plugin: a /ping that is Healthy only when every model has a
        # READY worker, and async worker restarts that work (tsvllm.host.frontend_plugin)
        "plugins_path": str(plugin_dir()),
    }
    if management_socket is not None:
        props["use_native_io"] = "true"  # TorchServe needs it for Unix sockets
    if model_store is not None:
        props["model_store"] = str(model_store)
        # models may come from the store only (TorchServe's default allows any http(s) URL)
        props["allowed_urls"] = f"file://{re.escape(str(model_store))}/.*"
    if netty_threads is not None:
        props["number_of_netty_threads"] = str(netty_threads)
        props["netty_client_threads"] = str(netty_threads)
    if initial_worker_port is not None:
        # workers talk to the frontend over /tmp/.ts.sock.<port>: distinct per server
        props["initial_worker_port"] = str(initial_worker_port)
    props.update(extra or {})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def frontend_threads(cores: int | None = None) -> int | None:
    """Netty threads for the frontend on a machine with ``cores`` usable CPUs (default:
    this process's): 1 on a machine of 4 cores or fewer, else TorchServe's default (None).

    On 2 cores that the engine saturates, one thread each for HTTP and for the worker
    sockets streamed 4-13% more tokens/s than TorchServe's two each, non-streaming the same
    (docs/PERFORMANCE.md, change 10). Bigger machines keep TorchServe's default: unmeasured.
    """
    if cores is None:  # the CPUs this process may run on (Linux), else all of them
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return 1 if cores <= 4 else None


class TorchServe:
    """One TorchServe (Java frontend + Python workers) started and stopped by us.

    ``auth="key"`` (the default): the handler checks the inference key and answers 401
    (:mod:`tsvllm.auth`); TorchServe's token auth is off and the management API listens on
    ``management.sock`` in the private work directory. ``"torchserve"``: TorchServe's own
    token auth (keys for both APIs; a bad key gets 400). ``"off"``: no auth, loopback only.
    Either way the inference key is in ``keys()["inference"]``.
    """

    def __init__(
        self,
        *,
        workdir: str | Path,
        model_store: str | Path,
        models: Sequence[str],
        ports: Ports | None = None,
        auth: Auth = "key",
        env: Mapping[str, str] | None = None,
        config_extra: Mapping[str, str] | None = None,
    ):
        """``config_extra`` overrides ``config.properties`` keys (e.g. a container's bind
        address); everything else keeps :func:`ts_config_text`'s secure defaults."""
        self.workdir = Path(workdir).resolve()
        self.model_store = Path(model_store).resolve()
        self.models = list(models)
        self.ports = ports or Ports.free()
        if auth not in ("key", "torchserve", "off"):
            raise ValueError(f"auth must be key, torchserve or off, not {auth!r}")
        self.auth = auth
        self.env = dict(env or {})
        self.config_extra = dict(config_extra or {})
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "torchserve.out"
        self._tmp: str | None = None  # TorchServe's pid file lives here: one per server
        self.metrics_proxy: Any = None  # tsvllm.host.metrics_proxy.MetricsProxy while running

    # -- paths and environment -------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.properties"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def control_dir(self) -> Path:
        """The drain control directory (:mod:`tsvllm.drain`), fresh at each start; the
        workers find it in ``TSVLLM_CONTROL_DIR``."""
        return self.workdir / "control"

    @property
    def metrics_dir(self) -> Path:
        """Where the workers write their engines' metrics (``TSVLLM_METRICS_DIR``), served
        with TorchServe's own on the metrics port (:mod:`tsvllm.host.metrics_proxy`)."""
        return self.workdir / "metrics"

    @property
    def management_socket(self) -> Path | None:
        """The management API's Unix socket (``auth="key"``), else None (TCP port)."""
        return self.workdir / "management.sock" if self.auth == "key" else None

    def _environ(self) -> dict[str, str]:
        if self._tmp is None:
            # Short on purpose: vLLM puts ZeroMQ IPC sockets in the temp dir, and a socket
            # path may not exceed 107 characters (a deep workdir would break the engine).
            self._tmp = tempfile.mkdtemp(prefix="tsvllm-ts-")
        env = {**os.environ, **self.env, "TMPDIR": self._tmp}
        env.pop(KEY_FILE_ENV, None)
        if self.auth == "key":
            env[KEY_FILE_ENV] = str(self.key_file)
        # the venv's bin first, so the frontend's workers use this interpreter's packages
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env[CONTROL_DIR_ENV] = str(self.control_dir)
        env[METRICS_DIR_ENV] = str(self.metrics_dir)
        env.setdefault("LOG_LOCATION", str(self.workdir / "logs"))
        env.setdefault("METRICS_LOCATION", str(self.workdir / "logs"))
        return env

    def _torchserve(self) -> str:
        exe = Path(sys.executable).parent / "torchserve"
        return str(exe) if exe.exists() else (shutil.which("torchserve") or "torchserve")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start TorchServe in the foreground (as our child)."""
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ServeError("Java not found: TorchServe needs a Java 11+ runtime (JDK 17 tested)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # keys and the management socket live here
        self.key_file.unlink(missing_ok=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)  # no drain left from a last run
        self.control_dir.mkdir(mode=0o700)
        if self.auth == "key":
            write_key_file(self.key_file)
        self.config_path.write_text(
            ts_config_text(
                ports=self.ports,
                model_store=self.model_store,
                token_auth=self.auth == "torchserve",
                management_socket=self.management_socket,
                initial_worker_port=random.randrange(10_000, 60_000, 100),
                netty_threads=frontend_threads(),
                extra={**self.config_extra, **self._start_metrics_proxy()},
            )
        )
        cmd = [
            self._torchserve(),
            "--start",
            "--ncs",
            "--foreground",
            "--model-store",
            str(self.model_store),
            "--ts-config",
            str(self.config_path),
        ]
        if self.models:
            cmd += ["--models", *self.models]
        cmd += ["--log-config", str(LOG_CONFIG)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self._environ(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # its own process group (Ctrl-C in our terminal reaches us only; we stop it in
            # order) but NOT its own session: a new session is a new CFS autogroup on Linux,
            # which made vLLM ~5x slower beside its clients (docs/PERFORMANCE.md)
            process_group=0,
        )
        log.close()

    def _start_metrics_proxy(self) -> dict[str, str]:
        """Serve the scrape endpoint on the metrics address (TorchServe's metrics plus every
        engine's ``vllm:*`` series); TorchServe's own moves to a free loopback port. Returns
        the config.properties key that moves it."""
        from urllib.parse import urlsplit

        from tsvllm.host.metrics_proxy import MetricsProxy

        public = urlsplit(self.config_extra.get("metrics_address", ""))
        internal = Ports.free().metrics
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # no files of a last run
        if self.metrics_proxy is not None:
            self.metrics_proxy.stop()
        self.metrics_proxy = MetricsProxy(
            directory=self.metrics_dir,
            upstream=f"http://127.0.0.1:{internal}/metrics",
            host=public.hostname or "127.0.0.1",
            port=public.port or self.ports.metrics,
        )
        try:
            self.metrics_proxy.start()
        except OSError as exc:
            self.metrics_proxy = None
            raise ServeError(f"the metrics port {self.ports.metrics} is not free: {exc}") from exc
        return {"metrics_address": f"http://127.0.0.1:{internal}"}

    @property
    def key_file(self) -> Path:
        """Where the keys are (TorchServe writes its own ``key_file.json`` in its cwd)."""
        return self.workdir / "key_file.json"

    def keys(self) -> dict[str, str]:
        """The auth keys: ``{"inference": ...}`` (TorchServe's also has management, API)."""
        if not self.key_file.exists():
            return {}
        data = json.loads(self.key_file.read_text())
        return {kind: entry["key"] for kind, entry in data.items()}

    def _get(self, url: str, *, key: str | None) -> tuple[int, str]:
        req = urllib.request.Request(url)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def probe(self, model: str, *, version: str = "1.0") -> bool:
        """True when ``model`` serves: ``/ping`` says Healthy (every model has a READY
        worker, tsvllm's frontend plugin) and its handler answers ``GET v1/models``.

        ``/ping`` first: a request sent while no worker is READY waits in TorchServe's
        queue instead of being answered. Raises ServeError when the handler answers that
        its engine can never start (:func:`engine_start_failure`): waiting would not help.
        """
        try:
            status, _ = self._get(f"{self.inference_url}/ping", key=self.keys().get("inference"))
        except (OSError, ValueError):
            return False  # frontend not listening yet
        if status != 200:
            return False
        url = f"{self.inference_url}/predictions/{model}/{version}/v1/models"
        try:
            status, body = self._get(url, key=self.keys().get("inference"))
        except (OSError, ValueError):
            return False  # frontend not listening yet, or a slow answer
        reason = engine_start_failure(status, body)
        if reason is not None:
            raise ServeError(
                f"model {model!r}: {reason}; see the worker log in {self.workdir / 'logs'}"
            )
        return status == 200

    def wait_ready(
        self,
        model: str,
        *,
        timeout: float = 600,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """Block until ``model`` serves requests; raise ServeError on exit or timeout, and
        at once when the engine can never start (see :meth:`probe`)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                reason = self.exit_reason()
                raise ServeError(
                    f"TorchServe exited with status {self.process.returncode}"
                    f"{': ' + reason if reason else ''}; "
                    f"see {self.log_path} and {self.workdir / 'logs'}"
                )
            if self.probe(model):
                return
            if on_wait:
                on_wait(time.monotonic() - start)
            time.sleep(1)
        raise ServeError(
            f"model {model!r} not ready after {timeout:.0f}s; see {self.workdir / 'logs'}"
        )

    def exit_reason(self) -> str:
        """Why the frontend stopped, from the end of its output: the exception lines a
        failed start prints (e.g. "Failed to bind to address ..."; "Caused by: ... Address
        already in use"), or "" when there are none."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-60:]
        except OSError:
            return ""
        marks = ("Exception: ", "Caused by: ", "Error: ", "Invalid configuration")
        found = [ln.strip() for ln in lines if any(m in ln for m in marks)]
        return "; ".join(found[:2])  # the first: what follows comes from the shutdown

    def process_tree(self) -> list[int]:
        """PIDs of the frontend and every descendant (workers, vLLM engine processes)."""
        import psutil

        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def send_stop(self, *, timeout: float = 60) -> None:
        """Run ``torchserve --stop`` for this server (what a user types), nothing more."""
        subprocess.run(
            [self._torchserve(), "--stop"],
            cwd=self.workdir,
            env=self._environ(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def stop(self, *, timeout: float = 60) -> None:
        """``torchserve --stop``, wait; kill whatever of our tree is still alive after that."""
        if self.process is None:
            return
        import psutil

        tree = []
        for pid in self.process_tree():
            try:
                tree.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        try:
            self.send_stop(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass  # a hung or missing `torchserve --stop`: the frontend is killed below
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.process = None
        if self.metrics_proxy is not None:
            self.metrics_proxy.stop()
            self.metrics_proxy = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
