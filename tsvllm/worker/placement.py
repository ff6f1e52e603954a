"""Which physical GPUs this worker's engine uses: right by construction, or refused.

TorchServe 0.12's frontend hands GPUs to workers as *logical* ids (positions in the list of
GPUs it counted), and only sometimes tells the worker's process about them:

* It counts GPUs with ``nvidia-smi --query-gpu=index,gpu_name --format=csv,nounits``, keeps
  the rows whose index is in its own ``CUDA_VISIBLE_DEVICES`` (all rows when unset), in
  nvidia-smi's order, and caps the count at ``number_of_gpu`` from config.properties
  (``SystemInfo.populateAccelerators``, ``ICsvSmiParser``, ``ConfigManager``). Logical id
  ``i`` is item ``i`` of that list: under ``CUDA_VISIBLE_DEVICES=4,5,6,7`` it hands out 0–3.
* With ``parallelType`` set and ``parallelLevel`` L > 0 on gpu, the frontend caps minWorkers
  and maxWorkers at pool // L (``ModelManager.updateModel``; at registration and on scaling);
  worker k gets ``gpuId`` = a per-model counter advanced by L modulo the pool, and its process gets
  ``CUDA_VISIBLE_DEVICES=gpuId,...,gpuId+L-1`` (with ``deviceIds``: that slice of the list):
  logical ids, written over the frontend's own value (``WorkLoadManager.addThreads``,
  ``WorkerThread.getDeviceIds``, ``WorkerLifeCycle.startWorkerPython``).
* Otherwise the counter is one for the whole frontend (all models), advanced by 1 from 0, so
  the first worker gets 1, then 2, ... modulo the pool (with ``deviceIds``: a per-model
  counter indexing that list); the process inherits the frontend's ``CUDA_VISIBLE_DEVICES``
  and only the handler sees the id, as ``context.system_properties["gpu_id"]``.

So without help every TP×PP = 1 engine lands on CUDA device 0, and under a restricted frontend
``CUDA_VISIBLE_DEVICES`` the custom case picks the wrong physical GPUs. :func:`place` turns
what the worker can know (:class:`GpuView`) into the physical devices its engine must use, or
a :class:`~tsvllm.config.ConfigError` saying why the assignment cannot work;
:func:`assign_gpus` gathers the view (the frontend's environment and config file from
``/proc/<parent>``, nvidia-smi) and sets ``CUDA_VISIBLE_DEVICES`` before the engine starts.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsvllm.config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)

ENV = "CUDA_VISIBLE_DEVICES"
#: what TorchServe's frontend runs (the worker's parent process)
FRONTEND_MAIN = "org.pytorch.serve.ModelServer"
#: the query TorchServe's frontend itself makes (CudaUtil.getAvailableAccelerators)
SMI_QUERY = ("nvidia-smi", "--query-gpu=index,gpu_name", "--format=csv,nounits")


@dataclass(frozen=True)
class GpuView:
    """What a worker can know about GPUs; :func:`observe` gathers it."""

    #: ``system_properties["gpu_id"]``: TorchServe's logical id, None when it found no GPU
    gpu_id: int | None
    #: the worker's CUDA_VISIBLE_DEVICES as started: TorchServe's logical ids under a
    #: parallelType with parallelLevel, else inherited from the frontend (None: unset)
    worker_visible: str | None
    #: the frontend's CUDA_VISIBLE_DEVICES (None: unset), valid when ``frontend_known``
    frontend_visible: str | None = None
    frontend_known: bool = False
    #: the index column of nvidia-smi (None: it could not be run)
    smi_indices: tuple[int, ...] | None = None
    #: ``number_of_gpu`` from the frontend's config.properties (None: not set or unknown)
    number_of_gpu: int | None = None


@dataclass(frozen=True)
class Placement:
    """The devices of one worker's engine."""

    #: physical ids for CUDA_VISIBLE_DEVICES, tensor_parallel × pipeline_parallel of them
    #: (divided by nnodes for an engine that spans several nodes: this node's share)
    devices: tuple[str, ...]
    #: the same devices as TorchServe's logical ids
    logical: tuple[int, ...]
    #: how many GPUs TorchServe hands out (None: unknown)
    gpu_count: int | None
    #: risks that do not stop the start (logged)
    warnings: tuple[str, ...] = ()

    @property
    def visible(self) -> str:
        """The value for CUDA_VISIBLE_DEVICES."""
        return ",".join(self.devices)


def parse_ids(value: str | None) -> list[int] | None:
    """``"0, 1,1"`` → ``[0, 1]`` (spaces dropped, duplicates removed, order kept, as
    TorchServe's ``parseVisibleDevicesEnv``); ``[]`` for None or empty; None when it is not
    integers separated by commas (UUIDs, MIG ids)."""
    if value is None or not value.strip():
        return []
    cleaned = re.sub(r"\s", "", value)
    if not re.fullmatch(r"\d+(,\d+)*", cleaned):
        return None
    return list(dict.fromkeys(int(x) for x in cleaned.split(",")))


def torchserve_gpus(
    smi_indices: Sequence[int] | None,
    frontend_visible: str | None,
    number_of_gpu: int | None = None,
) -> list[int] | None:
    """The physical GPUs TorchServe's frontend counts, in its order: logical id ``i`` is item
    ``i``. None when that cannot be known (no nvidia-smi and no CUDA_VISIBLE_DEVICES)."""
    wanted = parse_ids(frontend_visible)
    if wanted is None:
        return None  # the frontend refuses such a value itself (IllegalArgumentException)
    if smi_indices is None:
        # nvidia-smi lists GPUs by index, so its order is the ascending order
        gpus = sorted(wanted) if wanted else None
    elif wanted:
        keep = set(wanted)
        gpus = [i for i in smi_indices if i in keep]
    else:
        gpus = list(smi_indices)
    if gpus is not None and number_of_gpu is not None:
        gpus = gpus[: max(number_of_gpu, 0)]
    return gpus


def _span(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids)) if ids else "none"


def place(config: ModelConfig, view: GpuView, *, source: str = "model-config.yaml") -> Placement:
    """This worker's physical devices, or :class:`ConfigError` when the assignment cannot
    work (two engines would share a GPU, a GPU that TorchServe does not see, ...).

    For the leader of an engine that spans ``nnodes`` hosts, the worker's GPUs on this
    host are TP × PP / nnodes (the other nodes' workers run under ``tsvllm worker-node``).
    """
    problems: list[str] = []
    warnings: list[str] = []
    h = config.handler
    n = h.parallel_per_node  # this node's GPUs per worker (all of them on one node)
    sizes = (
        f"tensor_parallel_size {h.tensor_parallel_size} × "
        f"pipeline_parallel_size {h.pipeline_parallel_size}"
    )
    per_node = ""
    if h.nnodes > 1:
        sizes += f" / nnodes {h.nnodes}"
        per_node = " per node"
    if ENV in h.env:
        problems.append(
            f"handler.env.{ENV}: do not set it: it would give every worker the same GPUs; "
            "each worker's GPUs come from TorchServe (limit them with deviceIds, or with "
            f"{ENV} in the environment of torchserve itself)"
        )
    if view.gpu_id is None:
        problems.append(
            "deviceType: gpu, but TorchServe found no GPU and gave this worker none (it counts "
            "GPUs with nvidia-smi: check that nvidia-smi works for the user running "
            f"torchserve, and {ENV} and number_of_gpu); or set deviceType: cpu"
        )
        raise ConfigError(source, problems)

    # what the frontend ran under: its own environment, else (no parallelType) inherited
    custom = config.parallelType is not None and (config.parallelLevel or 0) > 0
    frontend_visible = view.frontend_visible
    if not view.frontend_known:
        if custom:
            frontend_visible = None
            warnings.append(
                f"the frontend's {ENV} is unknown (its environment could not be read); "
                "assuming it saw every GPU"
            )
        else:
            frontend_visible = view.worker_visible
    physical = torchserve_gpus(view.smi_indices, frontend_visible, view.number_of_gpu)
    count = None if physical is None else len(physical)
    seen = "unknown" if physical is None else _span(physical)
    where = f"TorchServe sees {count} GPU(s) (physical {seen}"
    where += f", frontend {ENV}={frontend_visible})" if frontend_visible else ")"
    if count is None:
        warnings.append("could not count the GPUs (nvidia-smi failed); GPU checks skipped")

    pool = count
    ids = config.deviceIds
    if ids and count is not None:
        bad = [i for i in ids if i >= count]
        if bad:
            problems.append(
                f"deviceIds: {_span(bad)} not among the {count} GPU(s) TorchServe sees "
                f"(logical 0–{count - 1}); TorchServe then ignores the whole list"
            )
        else:
            pool = len(ids)
    if ids and len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        problems.append(f"deviceIds: {_span(dupes)} listed twice; list each GPU once")

    if custom:
        level = config.parallelLevel or 0
        if level != n:
            problems.append(
                f"parallelLevel {level} does not match {sizes} ({n} GPU(s){per_node}); "
                f"set parallelLevel: {n}"
            )
        logical = parse_ids(view.worker_visible)
        if not logical:
            problems.append(
                f"TorchServe set no usable {ENV} for this worker (got {view.worker_visible!r}) "
                f"although parallelType is {config.parallelType} with parallelLevel {level}"
            )
            logical = []
        elif len(logical) != level:
            problems.append(
                f"TorchServe gave this worker {_span(logical)} but parallelLevel is {level}"
            )
        per_worker = level
    elif n == 1:
        logical = [view.gpu_id]
        per_worker = 1
    else:
        # without parallelType TorchServe advances its GPU counter by 1 per worker: two
        # workers of n GPUs would overlap, so only a single worker can use n GPUs
        per_worker = n
        if config.minWorkers > 1:
            problems.append(
                f"parallelType is not set, so TorchServe gives each worker one GPU id and "
                f"{config.minWorkers} workers of {n} GPUs{per_node} ({sizes}) would share "
                f"GPUs; set parallelType: custom and parallelLevel: {n}"
            )
        if config.maxWorkers > 1:
            warnings.append(
                f"maxWorkers {config.maxWorkers}: scaling up would put two engines on one GPU; "
                f"set parallelType: custom and parallelLevel: {n}"
            )
        logical = list(ids[:n]) if ids else list(range(n))

    if pool is not None and per_worker > 0:
        fit = pool // per_worker
        of = f"{pool} in deviceIds" if pool != count else f"{pool}"
        need = config.minWorkers * per_worker
        if custom and need > pool and fit:
            # ModelManager.updateModel caps min/maxWorkers at GPUs // parallelLevel on gpu
            warnings.append(
                f"minWorkers {config.minWorkers} × {per_worker} GPU(s){per_node} = {need} GPUs, "
                f"but {of} are available ({where}): TorchServe runs only {fit} worker(s); set "
                f"minWorkers and maxWorkers to {fit} to say so"
            )
        elif need > pool:
            fix = (
                f"lower minWorkers and maxWorkers to {fit}"
                if fit
                else f"use at most {pool} GPU(s) per worker{per_node} ({sizes})"
            )
            problems.append(
                f"minWorkers: {config.minWorkers} worker(s) × {per_worker} GPU(s) per worker"
                f"{per_node} ({sizes}) = {need} GPUs, but {of} are available ({where}); {fix}, "
                "or run on more GPUs"
            )
        elif not custom and config.maxWorkers * per_worker > pool:
            warnings.append(
                f"maxWorkers {config.maxWorkers} × {per_worker} GPU(s){per_node} = "
                f"{config.maxWorkers * per_worker} > {pool}: scaling beyond {fit} worker(s) "
                "would put two engines on one GPU"
            )
    if count is not None:
        outside = [i for i in logical if i >= count]
        if outside:
            problems.append(
                f"TorchServe gave this worker GPU(s) {_span(logical)}, but {where}; "
                "the workers' GPUs overlap or run past the last GPU (after scaling, TorchServe "
                "keeps counting): register the model again with fewer workers"
            )
    if problems:
        raise ConfigError(source, problems)
    devices = tuple(str(physical[i]) if physical is not None else str(i) for i in logical)
    return Placement(
        devices=devices, logical=tuple(logical), gpu_count=count, warnings=tuple(warnings)
    )


# -- what the worker can observe (impure) --------------------------------------------------


def _proc_text(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def frontend_process(ppid: int | None = None, proc: Path = Path("/proc")) -> Path | None:
    """``/proc/<pid>`` of TorchServe's Java frontend when it is this worker's parent."""
    pid = os.getppid() if ppid is None else ppid
    cmdline = _proc_text(proc / str(pid) / "cmdline")
    if cmdline is None or FRONTEND_MAIN.encode() not in cmdline.split(b"\0"):
        return None
    return proc / str(pid)


def frontend_environ(frontend: Path) -> dict[str, str] | None:
    """The environment the frontend was started with (what its workers inherit)."""
    raw = _proc_text(frontend / "environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


def frontend_number_of_gpu(frontend: Path) -> int | None:
    """``number_of_gpu`` from the frontend's config.properties (``-f FILE``), if set."""
    raw = _proc_text(frontend / "cmdline")
    if raw is None:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0")]
    try:
        path = Path(args[args.index("-f") + 1])
    except (ValueError, IndexError):
        return None
    if not path.is_absolute():
        path = frontend / "cwd" / path
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        match = re.fullmatch(r"\s*number_of_gpu\s*[=:]\s*(\d+)\s*", line)
        if match:
            return int(match.group(1))
    return None


def smi_indices(timeout: float = 20.0) -> tuple[int, ...] | None:
    """The GPUs' indices as TorchServe's frontend reads them from nvidia-smi; None on failure."""
    try:
        out = subprocess.run(
            SMI_QUERY, capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    indices = []
    for line in out.splitlines()[1:]:  # a header line, then one row per GPU
        first = line.split(",", 1)[0].strip()
        if first.isdigit():
            indices.append(int(first))
    return tuple(indices)


def observe(system_properties: Mapping[str, Any], environ: Mapping[str, str]) -> GpuView:
    """Gather :class:`GpuView` for this worker (reads /proc, runs nvidia-smi)."""
    gpu_id = system_properties.get("gpu_id")
    frontend = frontend_process()
    env = frontend_environ(frontend) if frontend is not None else None
    return GpuView(
        gpu_id=None if gpu_id is None else int(gpu_id),
        worker_visible=environ.get(ENV),
        frontend_visible=None if env is None else env.get(ENV),
        frontend_known=env is not None,
        smi_indices=smi_indices(),
        number_of_gpu=frontend_number_of_gpu(frontend) if frontend is not None else None,
    )


def worker_name(argv: Sequence[str] = sys.argv) -> str:
    """TorchServe's name for this worker's port (``W-<port>``), else ``pid <pid>``."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--sock-name", "--port"):
            match = re.search(r"(\d+)$", argv[i + 1])
            if match:
                return f"W-{match.group(1)}"
    return f"pid {os.getpid()}"


def assign_gpus(
    config: ModelConfig, system_properties: Mapping[str, Any], environ: Any = os.environ
) -> ConfigError | None:
    """On deviceType gpu: set ``environ[CUDA_VISIBLE_DEVICES]`` to this worker's devices and
    log them; return the :class:`ConfigError` when the placement cannot work (the handler
    then fails its engine start with it), else None."""
    if config.deviceType != "gpu":
        return None
    model_dir = Path(system_properties.get("model_dir") or ".")
    try:
        placement = place(
            config, observe(system_properties, environ), source=str(model_dir / "model-config.yaml")
        )
    except ConfigError as exc:
        logger.error("worker %s: no GPUs: %s", worker_name(), exc)
        return exc
    for warning in placement.warnings:
        logger.warning("tsvllm GPU placement: %s", warning)
    environ[ENV] = placement.visible
    logger.info(
        "worker %s: GPUs %s (TorchServe's logical %s of %s)",
        worker_name(),
        placement.visible,
        _span(placement.logical),
        placement.gpu_count if placement.gpu_count is not None else "unknown",
    )
    return None
