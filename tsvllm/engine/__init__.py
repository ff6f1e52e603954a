"""The engine seam: the Engine protocol (base) and its one vLLM implementation (vllm_engine)."""
