"""Deployment assets from a model config, generated and validated offline.

``tsvllm deploy {azureml,k8s,vertex} CONFIG --out DIR`` (:func:`generate`) writes the
platform's files plus a README with the commands to paste; ``tsvllm validate DIR``
(:mod:`tsvllm.deploy.validate`) runs each platform's own validator on them, plus our
checks for what those miss. Every platform runs the same container
(``docker/Dockerfile*``, :mod:`tsvllm.host.entrypoint`), configured by environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsvllm.deploy.common import DeployError, DeployOptions

PLATFORMS = ("azureml", "k8s", "vertex")
__all__ = ["PLATFORMS", "DeployError", "DeployOptions", "generate"]


def generate(
    platform: str, config: str | Path, *, out: str | Path, options: DeployOptions | None = None
) -> list[Path]:
    """Write ``platform``'s assets for the model config at ``config`` into ``out``."""
    from tsvllm.config import load_model_config
    from tsvllm.deploy import azureml, k8s, vertex
    from tsvllm.deploy.common import target_for, write_files

    options = options or DeployOptions()
    target = target_for(load_model_config(config), source=str(config), options=options)
    nnodes = target.config.handler.nnodes
    if nnodes > 1 and platform != "k8s":
        raise DeployError(
            f"vllm_engine_config.nnodes {nnodes}: {platform} runs one engine per machine; an "
            "engine over several nodes needs Kubernetes (tsvllm deploy k8s, a LeaderWorkerSet)"
        )
    files: dict[str, Any]
    if platform == "azureml":
        files = azureml.generate(
            target,
            private=options.private,
            instance_type_=options.instance_type,
            replicas=options.replicas,
        )
    elif platform == "k8s":
        files = k8s.generate(
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
    elif platform == "vertex":
        files = vertex.generate(target, artifact_uri=options.artifact_uri)
    else:
        raise DeployError(f"unknown platform {platform!r}; use one of {', '.join(PLATFORMS)}")
    return write_files(out, files)
