"""Code that runs inside TorchServe's Python worker process.

``handler`` (VLLMHandler: engine lifecycle and dispatch), ``core`` (the one request
path), ``routes`` (route table), ``adapters`` (protocol bodies), ``hooks`` (the hook
contract), ``ts_worker`` (TorchServe's worker protocol), ``lifeline`` (engine processes
die with the worker), ``rag_guard`` (the RAG + guards handler). Nothing here is imported
by :mod:`tsvllm.host`, which runs in another process.
"""
