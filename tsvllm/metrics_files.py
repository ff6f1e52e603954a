"""The metrics file protocol between the workers and the host's scrape endpoint.

Each worker (:mod:`tsvllm.worker.engine_metrics`) writes its engine's ``vllm:*`` series to
``worker-<pid>.prom`` in the directory the host names in ``TSVLLM_METRICS_DIR``; the host
(:mod:`tsvllm.host.torchserve` names the directory, :mod:`tsvllm.host.metrics_proxy` serves
the files) reads them. Both sides import the names from here, as they do for the drain
protocol (:mod:`tsvllm.drain`): the host imports nothing from the worker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

METRICS_DIR_ENV = "TSVLLM_METRICS_DIR"
FILE_GLOB = "worker-*.prom"


def metrics_dir(environ: Mapping[str, str]) -> Path | None:
    """The directory named by ``TSVLLM_METRICS_DIR``, or None (then nothing is written)."""
    value = environ.get(METRICS_DIR_ENV, "").strip()
    return Path(value) if value else None


def file_for(directory: Path, pid: int) -> Path:
    return directory / f"worker-{pid}.prom"


def pid_of(path: Path) -> int | None:
    """The worker pid in a ``worker-<pid>.prom`` file name, else None."""
    match = re.fullmatch(r"worker-(\d+)\.prom", path.name)
    return int(match.group(1)) if match else None
