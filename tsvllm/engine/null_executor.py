"""The bench's null engine: a vLLM executor with no model, for ``tsvllm bench serve --engine null``.

vLLM runs everything else for real: its API server or tsvllm's handler, input processing,
``AsyncLLM`` and its detokenizer, the ``EngineCore`` process and its scheduler. Only the
forward pass is gone: :class:`NullExecutor` answers each scheduled step at once (or at
``TSVLLM_NULL_TOKENS_PER_S`` steps per second) with real token ids of the served model's
tokenizer (:mod:`tsvllm.engine.null_tokens`). Both sides of the bench get it the same way,
through vLLM's own engine arg ``distributed_executor_backend`` (a class's qualified name;
vLLM 0.32's ``Executor.get_class``), so the request path has no branch for it and what is
left to measure is the serving layer.

It lives beside :mod:`tsvllm.engine.vllm_engine` because it imports vLLM's internals (the
executor interface, ``vllm/v1/executor/abstract.py``): when vLLM moves them, ``tsvllm/engine/``
is the folder to change. Nothing in the serving path imports it; vLLM loads it by name.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

import torch
from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts
from vllm.v1.executor.abstract import Executor
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.outputs import ModelRunnerOutput

from tsvllm.engine.null_tokens import TEXT, TOKENS_PER_S_ENV, NullTokens, Pace

#: KV cache the scheduler may hand out: blocks of one small layer (no memory is used)
_BLOCK_SIZE = 16
_NUM_BLOCKS = 65536
_LAYER = "model.layers.0.self_attn.attn"
#: worker calls that change nothing here
_NO_OPS = frozenset(
    {"update_max_model_len", "reset_mm_cache", "reset_encoder_cache", "synchronize_device"}
)


def token_ids(tokenizer_path: str, *, trust_remote_code: bool = False) -> list[int]:
    """The token ids of :data:`~tsvllm.engine.null_tokens.TEXT` in the served model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    return tokenizer.encode(TEXT, add_special_tokens=False)


class NullExecutor(Executor):
    """An executor whose steps sample :class:`NullTokens` instead of running a model."""

    def _init_executor(self) -> None:
        model = self.vllm_config.model_config
        self._tokens = NullTokens(
            token_ids=token_ids(model.tokenizer, trust_remote_code=model.trust_remote_code)
        )
        self._pace = Pace(tokens_per_s=float(os.environ.get(TOKENS_PER_S_ENV) or 0))
        self._spec = FullAttentionSpec(
            block_size=_BLOCK_SIZE, num_kv_heads=1, head_size=64, dtype=torch.float16
        )

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None, non_block=False):  # type: ignore[override]
        name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
        if name not in _NO_OPS:
            raise NotImplementedError(f"the null engine does not run {name!r}")
        result: list[Any] = [None]
        return _done(result) if non_block else result

    # start-up: one small KV cache layer, nothing to load or warm up
    def get_kv_cache_specs(self) -> list[dict[str, Any]]:
        return [{_LAYER: self._spec}]

    def determine_available_memory(self) -> list[int]:
        return [self._spec.page_size_bytes * _NUM_BLOCKS]

    def get_supported_kv_cache_layouts(self) -> list[list[str]]:
        return [[layout.name for layout in get_supported_kv_cache_layouts(())]]

    def set_kv_cache_layout(self, layout_name: str) -> None:
        pass

    def initialize_from_config(self, kv_cache_configs: list[Any]) -> None:
        pass

    def compile_or_warm_up_model(self) -> None:
        pass

    @property
    def supported_tasks(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("generate",)

    # serving
    def execute_model(self, scheduler_output: Any, non_block: bool = False) -> Any:  # type: ignore[override]
        self._pace.wait()
        out = scheduler_output
        cached = out.scheduled_cached_reqs
        computed = dict(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
        new_prompts = {}
        for req in out.scheduled_new_reqs:
            computed[req.req_id] = req.num_computed_tokens
            new_prompts[req.req_id] = len(req.prompt_token_ids or ())
        sampled = self._tokens.step(
            new_prompts=new_prompts,
            computed=computed,
            scheduled=out.num_scheduled_tokens,
            finished=out.finished_req_ids,
        )
        req_ids = list(sampled)
        result = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={req_id: i for i, req_id in enumerate(req_ids)},
            sampled_token_ids=[sampled[req_id] for req_id in req_ids],
        )
        return _done(result) if non_block else result

    def sample_tokens(self, grammar_output: Any, non_block: bool = False) -> Any:  # type: ignore[override]
        raise NotImplementedError("the null engine samples in execute_model")

    def take_draft_token_ids(self) -> None:
        return None

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def _done(result: Any) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future
