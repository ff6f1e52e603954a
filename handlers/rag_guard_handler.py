"""TorchServe handler entry file: VLLMHandler plus RAG and guards, configured from YAML.

Set ``handler.rag`` and/or ``handler.guards`` in model-config.yaml (see
model_configs/smollm2-rag-cpu.yaml) and archive with
``tsvllm archive CONFIG --handler handlers/rag_guard_handler.py --extra-files INDEX_DIR``.
"""

from tsvllm.worker.rag_guard import RagGuardHandler as _RagGuardHandler


class RagGuardHandler(_RagGuardHandler):
    """tsvllm's RAG + guards handler, unchanged."""
