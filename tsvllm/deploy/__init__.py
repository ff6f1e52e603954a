"""Deployment assets from a model config, generated and validated offline.

``tsvllm deploy PLATFORM CONFIG --out DIR`` (:func:`generate`) writes the platform's files
plus a README with the commands to paste; ``tsvllm validate DIR``
(:mod:`tsvllm.deploy.validate`) runs each platform's own validator on them, plus our
checks for what those miss. Every platform runs the same container
(``docker/Dockerfile*``, :mod:`tsvllm.host.entrypoint`), configured by environment.

A platform is one module with an ``assets(target, options)`` function (file name → text)
and one entry in :data:`PLATFORMS`; the CLI takes its choices from there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from tsvllm.deploy.common import DeployError, DeployOptions


@dataclass(frozen=True)
class Platform:
    """One deployment target."""

    title: str
    #: the module whose ``assets(target, options)`` returns file name → text
    module: str
    #: DeployOptions fields that only this platform reads (the CLI refuses them elsewhere)
    own_options: tuple[str, ...] = ()
    #: it can run one engine over several nodes (vllm_engine_config.nnodes > 1)
    multinode: bool = False


PLATFORMS: dict[str, Platform] = {
    "azureml": Platform("Azure ML", "tsvllm.deploy.azureml", own_options=("private",)),
    "k8s": Platform(
        "Kubernetes",
        "tsvllm.deploy.k8s",
        own_options=(
            "autoscaling",
            "disable_token_auth",
            "max_replicas",
            "waiting_per_replica",
            "prometheus_url",
        ),
        multinode=True,
    ),
    "vertex": Platform("Vertex AI", "tsvllm.deploy.vertex", own_options=("artifact_uri",)),
}
__all__ = ["PLATFORMS", "DeployError", "DeployOptions", "Platform", "generate"]


def generate(
    platform: str, config: str | Path, *, out: str | Path, options: DeployOptions | None = None
) -> list[Path]:
    """Write ``platform``'s assets for the model config at ``config`` into ``out``."""
    from tsvllm.config import load_model_config
    from tsvllm.deploy.common import target_for, write_files

    entry = PLATFORMS.get(platform)
    if entry is None:
        raise DeployError(f"unknown platform {platform!r}; use one of {', '.join(PLATFORMS)}")
    options = options or DeployOptions()
    target = target_for(load_model_config(config), source=str(config), options=options)
    nnodes = target.config.handler.nnodes
    if nnodes > 1 and not entry.multinode:
        several = ", ".join(f"tsvllm deploy {n}" for n, p in PLATFORMS.items() if p.multinode)
        raise DeployError(
            f"vllm_engine_config.nnodes {nnodes}: {platform} runs one engine per machine; an "
            f"engine over several nodes needs Kubernetes ({several}, a LeaderWorkerSet)"
        )
    files = importlib.import_module(entry.module).assets(target, options)
    return write_files(out, files)
