"""tsvllm: serve vLLM through TorchServe with an OpenAI API and handler hooks.

Nothing heavy is imported here: ``tsvllm.VLLMHandler`` is resolved lazily so that
``import tsvllm`` works without vLLM installed (config validation, archives, CLI).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["VLLMHandler", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "VLLMHandler":
        from tsvllm.worker.handler import VLLMHandler

        return VLLMHandler
    raise AttributeError(f"module 'tsvllm' has no attribute {name!r}")
