"""TorchServe handler entry file: the default handler that archives package.

TorchServe imports this file and uses the one class defined in it. To customise, copy
this file, subclass ``tsvllm.VLLMHandler`` and override what you need; pass your file
with ``tsvllm archive ... --handler my_handler.py``.
"""

from tsvllm import VLLMHandler as _VLLMHandler


class VLLMHandler(_VLLMHandler):
    """tsvllm's OpenAI-compatible vLLM handler, unchanged."""
