"""Each worker's vLLM metrics, written where the host's scrape endpoint finds them.

vLLM's stat loggers run in the process that owns its engine client (``AsyncLLM``): the
TorchServe worker. Its ``vllm:*`` Prometheus series live in that process's registry,
which no TorchServe endpoint shows (the metrics port shows only what handlers emit
through ``context.metrics``; an inference request reaches one worker of the frontend's
choice). So every :data:`INTERVAL_S` each worker renders its ``vllm:*`` series, labelled
``ts_model``, ``ts_version`` and ``ts_worker`` (several workers and models in one TorchServe
never overwrite each other), into ``worker-<pid>.prom`` in the directory the host names in
``TSVLLM_METRICS_DIR`` (atomically replaced; removed while the engine is not running). The
host (:mod:`tsvllm.host.metrics_proxy`) serves them beside TorchServe's own metrics and
ignores the files of workers that are gone. Both sides take the file names from
:mod:`tsvllm.metrics_files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tsvllm.metrics_files import file_for, metrics_dir  # the file protocol the host reads

logger = logging.getLogger(__name__)

#: seconds between two renders of the engine's metrics
INTERVAL_S = 2.0
#: only these series are exported (the engine's own; the registry also holds the worker's
#: python_*/process_* and vLLM's HTTP instrumentation, which are not the engine's)
PREFIX = "vllm:"
#: the labels every exported series gets
LABELS = ("ts_model", "ts_version", "ts_worker")

#: the strong references of the running tasks (the event loop holds only weak ones)
_TASKS: set[asyncio.Task] = set()


def worker_id(argv: Sequence[str] | None = None, *, pid: int | None = None) -> str:
    """This worker's id as TorchServe's frontend names it (``W-<port>``, from the worker's
    ``--sock-name /tmp/.ts.sock.<port>`` or ``--port``), else ``pid-<pid>``."""
    argv = sys.argv if argv is None else argv
    for flag in ("--sock-name", "--port"):
        if flag in argv[:-1]:
            match = re.search(r"(\d+)$", argv[argv.index(flag) + 1])
            if match:
                return f"W-{match.group(1)}"
    return f"pid-{os.getpid() if pid is None else pid}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def relabel(text: str, labels: Mapping[str, str], *, prefix: str = PREFIX) -> str:
    """The ``prefix`` families of Prometheus text ``text``, each sample with ``labels`` added.

    ``# HELP``/``# TYPE`` lines are kept for those families; every other line is dropped.
    """
    extra = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    out = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            parts = line.split(" ", 3)
            if len(parts) > 2 and parts[2].startswith(prefix):
                out.append(line)
            continue
        if not line.startswith(prefix):
            continue  # another family, a comment or a blank line
        brace, space = line.find("{"), line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            rest = line[brace + 1 :]
            sep = "" if rest.startswith("}") or not extra else ","
            out.append(f"{line[: brace + 1]}{extra}{sep}{rest}")
        elif space != -1:
            out.append(f"{line[:space]}{{{extra}}}{line[space:]}")
    return "\n".join(out) + "\n" if out else ""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class EngineMetrics:
    """Writes one worker's labelled engine metrics to its file, every :data:`INTERVAL_S`.

    ``engine`` returns the serving engine, or None while there is none (starting, given
    up, replaced after a crash): then the file is removed, so the host shows no series of
    an engine that does not run.
    """

    def __init__(
        self,
        directory: Path,
        *,
        engine: Callable[[], Any],
        labels: Mapping[str, str],
        interval_s: float = INTERVAL_S,
        pid: int | None = None,
    ):
        self.directory = directory
        self.labels = dict(labels)
        self.interval_s = interval_s
        self.path = file_for(directory, os.getpid() if pid is None else pid)
        self._engine = engine
        self._failed = False

    def write_once(self) -> bool:
        """Render and write the engine's metrics now; False (file removed) without one."""
        engine = self._engine()
        render = getattr(engine, "metrics_text", None)
        if engine is None or getattr(engine, "dead", False) or render is None:
            self.remove()
            return False
        text = relabel(render(), self.labels)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, text)
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    async def run(self) -> None:
        """Write until cancelled (a failed write is logged once and retried); then remove."""
        try:
            while True:
                try:
                    self.write_once()
                    self._failed = False
                except Exception:
                    if not self._failed:
                        logger.exception(
                            "tsvllm: writing the engine metrics to %s failed", self.path
                        )
                    self._failed = True
                await asyncio.sleep(self.interval_s)
        finally:
            with contextlib.suppress(OSError):
                self.remove()


def labels_for(context: Any) -> dict[str, str]:
    """``ts_model``, ``ts_version`` and ``ts_worker`` of the worker ``context`` belongs to."""
    manifest = getattr(context, "manifest", None) or {}
    model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
    return {
        "ts_model": str(getattr(context, "model_name", "") or model.get("modelName", "")),
        "ts_version": str(model.get("modelVersion", "") or ""),
        "ts_worker": worker_id(),
    }


def start(handler: Any, context: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    """Start writing ``handler``'s engine metrics on the running loop (the worker's), if the
    host named a directory (``TSVLLM_METRICS_DIR``); returns the writer, or None."""
    directory = metrics_dir(os.environ if environ is None else environ)
    if directory is None:
        return None

    def engine() -> Any:
        return handler.engine

    writer = EngineMetrics(directory, engine=engine, labels=labels_for(context))
    task = asyncio.get_event_loop().create_task(writer.run())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return writer
