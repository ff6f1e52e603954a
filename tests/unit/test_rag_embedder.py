"""Which precision ``query_precision: auto`` picks on which CPU (probes mocked)."""

from __future__ import annotations

import pytest

from tsvllm.rag.embedder import resolve_precision

PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "want"),
    [(False, False, "float32"), (True, False, "bfloat16"), (False, True, "bfloat16")],
)
def test_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, want):
    import torch

    monkeypatch.setattr(torch.cpu, PROBES[0], lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, PROBES[1], lambda: amx)
    assert resolve_precision("auto") == want


def test_auto_without_the_probes_is_float32(monkeypatch):
    import torch

    for probe in PROBES:
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert resolve_precision("auto") == "float32"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_an_explicit_precision_is_kept(precision):
    assert resolve_precision(precision) == precision
