"""A LoRA adapter for a local Llama-shaped model, made in the test (no hub).

PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``) with random
``lora_A``/``lora_B`` on ``q_proj`` and ``v_proj``: enough to change the model's output,
which is what a test of adapter loading needs to see.
"""

from __future__ import annotations

import json
from pathlib import Path


def build_lora(base_model: Path, out: Path, *, rank: int = 8, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((base_model / "config.json").read_text())
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    out_dims = {
        "q_proj": cfg["num_attention_heads"] * head_dim,
        "v_proj": cfg["num_key_value_heads"] * head_dim,
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out_dim in out_dims.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(out_dims),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
