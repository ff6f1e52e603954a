"""A tiny Llama whose greedy reply to a Llama Guard prompt is scripted, for the judge e2e.

The random-weight tiny model answers noise, which the judge cannot parse, so it can only
show that the judge fails closed. This model (the tiny model's tokenizer, one layer, weights
set by hand) answers ``safe`` to a Llama Guard prompt, and ``unsafe S1`` when the
conversation contains the word ``kill``: a served engine that gives the judge a real,
parseable verdict that depends on the text it was asked about.

How: every token's embedding has a constant component; the tokens of the reply each have
their own identity dimension, and the trigger token (``ill``, as in `` kill``) a flag. One
attention head lets the last position attend to a trigger token anywhere before it and copies
its flag into a "seen" dimension; the MLP is zero. The output matrix then maps (current
token, seen) to the next token of the reply: ``\\n`` (the prompt's last token) → ``s a f e``
→ EOS, or, with the flag seen, ``\\n`` → ``un s a f e`` → `` S 1`` → EOS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: the word that makes the judge answer "unsafe S1"
TRIGGER_WORD = "kill"
SAFE_REPLY = "safe"
UNSAFE_REPLY = "unsafe S1"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_scripted_judge(tiny: Path, out: Path) -> Path:
    """Write the scripted judge model into ``out`` (the tokenizer comes from ``tiny``)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(tiny / name, out / name)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    base = json.loads((tiny / "config.json").read_text())

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    (newline,) = ids("\n")  # the last token of every Llama Guard prompt
    (trigger,) = [i for i in ids(" " + TRIGGER_WORD) if tok.id_to_token(i) == "ill"]
    eos = base["eos_token_id"]
    safe, unsafe, codes = ids("safe"), ids("unsafe"), ids(" S1")
    e = safe[-1]  # "e": where "safe" ends and "unsafe" goes on
    assert unsafe[1:] == safe, (unsafe, safe)
    # (current token → next token) that do not depend on the flag
    plain = (
        list(zip(unsafe, unsafe[1:], strict=False))
        + list(zip([e, *codes], [*codes, eos], strict=False))[1:]
    )
    chain = {newline, e, *unsafe, *codes}

    hidden = base["hidden_size"]
    config = LlamaConfig(
        vocab_size=base["vocab_size"],
        hidden_size=hidden,
        intermediate_size=base["intermediate_size"],
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=base["max_position_embeddings"],
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=base["bos_token_id"],
        eos_token_id=eos,
        pad_token_id=base["pad_token_id"],
    )
    model = LlamaForCausalLM(config)
    bias, flag, seen = 0, 1, 2
    identity = {t: 3 + n for n, t in enumerate(sorted(chain))}
    a, b, d = 2.0, 0.5, 0.5  # identity weight, flag weight, tie-break
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (
            model.model.norm,
            model.model.layers[0].input_layernorm,
            model.model.layers[0].post_attention_layernorm,
        ):
            norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, bias] = 1.0
        emb[trigger, flag] = 1.0
        for t, dim in identity.items():
            emb[t, dim] = 1.0
        attn = model.model.layers[0].self_attn
        # head 0, rotary pair (31, 63): the lowest frequency, so position barely matters
        attn.q_proj.weight[31, bias] = 1.5
        attn.k_proj.weight[31, flag] = 1.5
        attn.v_proj.weight[0, flag] = 1 / 11.3  # the flag's normalised value is ~11.3
        attn.o_proj.weight[seen, 0] = 1.0
        head = model.lm_head.weight
        head[eos, bias] = 0.2  # any other context: stop
        for cur, nxt in plain:
            head[nxt, identity[cur]] += a
        for cur, no_flag, with_flag in ((newline, safe[0], unsafe[0]), (e, eos, codes[0])):
            head[no_flag, identity[cur]] += a
            head[no_flag, seen] -= b
            head[with_flag, identity[cur]] += a - d
            head[with_flag, seen] += b
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=base["bos_token_id"], eos_token_id=eos, pad_token_id=base["pad_token_id"]
    )
    model.save_pretrained(out)
    return out
