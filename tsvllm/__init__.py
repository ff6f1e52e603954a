"""tsvllm: serve vLLM through TorchServe with an OpenAI API and handler hooks.

What handler authors import: ``from tsvllm import VLLMHandler, RequestContext,
RequestView, EndStream, StreamEvent, ClientError, ContentFiltered, BadRequest``. Nothing
heavy is imported here: the names are resolved lazily so that ``import tsvllm`` works
without vLLM installed (config validation, archives, CLI).
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> the module defining it
_PUBLIC = {
    "VLLMHandler": "tsvllm.worker.handler",
    "Hooks": "tsvllm.worker.hooks",
    "RequestContext": "tsvllm.worker.hooks",
    "RequestView": "tsvllm.worker.hooks",
    "EndStream": "tsvllm.worker.hooks",
    "StreamEvent": "tsvllm.engine.base",
    "ClientError": "tsvllm.errors",
    "ContentFiltered": "tsvllm.errors",
    "BadRequest": "tsvllm.errors",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tsvllm' has no attribute {name!r}")
