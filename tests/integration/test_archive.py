"""Artifacts built with torch-model-archiver's real API: formats, weights, overwrite."""

from __future__ import annotations

import tarfile
import zipfile

import pytest
import yaml

from tsvllm.config import ConfigError, dump_model_config, loads_model_config
from tsvllm.host.archive import ArchiveError, build_archive

CONFIG = """
minWorkers: 1
maxWorkers: 1
deviceType: cpu
asyncCommunication: true
handler:
  model_path: {model}
  served_model_name: [tiny]
  vllm_engine_config: {{max_model_len: 512}}
"""


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "weights" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


@pytest.fixture
def config(tmp_path, model):
    path = tmp_path / "model-config.yaml"
    dump_model_config(loads_model_config(CONFIG.format(model=model)), path)
    return path


def test_no_archive_references_weights_by_absolute_path(tmp_path, config, model):
    out = build_archive(config, name="vllm", fmt="no-archive", export_path=tmp_path / "store")
    assert out == tmp_path / "store" / "vllm"
    packed = yaml.safe_load((out / "model-config.yaml").read_text())
    assert packed["handler"]["model_path"] == str(model)
    assert (out / "vllm_handler.py").is_file()
    assert (out / "MAR-INF" / "MANIFEST.json").is_file()
    assert not (out / "model.safetensors").exists()


def test_mar_and_tgz_hold_config_and_handler(tmp_path, config):
    mar = build_archive(config, name="vllm", fmt="mar", export_path=tmp_path)
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
    assert {"model-config.yaml", "vllm_handler.py", "MAR-INF/MANIFEST.json"} <= names
    tgz = build_archive(config, name="vllm", fmt="tgz", export_path=tmp_path)
    assert tgz.name == "vllm.tar.gz"
    with tarfile.open(tgz) as t:
        assert "vllm/model-config.yaml" in t.getnames()


def test_include_weights_packs_the_model_folder(tmp_path, config):
    mar = build_archive(config, name="vllm", fmt="mar", export_path=tmp_path, include_weights=True)
    with zipfile.ZipFile(mar) as z:
        assert "tiny/model.safetensors" in z.namelist()
        packed = yaml.safe_load(z.read("model-config.yaml"))
    assert packed["handler"]["model_path"] == "tiny"  # relative to the archive's model_dir


def test_refuses_to_overwrite_without_force(tmp_path, config):
    build_archive(config, name="vllm", fmt="mar", export_path=tmp_path)
    with pytest.raises(ArchiveError, match="already exists; pass --force"):
        build_archive(config, name="vllm", fmt="mar", export_path=tmp_path)
    assert build_archive(config, name="vllm", fmt="mar", export_path=tmp_path, force=True)


def test_missing_model_and_bad_config_are_reported_before_packing(tmp_path, model):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.format(model=tmp_path / "nowhere"))
    with pytest.raises(ArchiveError, match="no model at .*tsvllm demo-model"):
        build_archive(bad, name="vllm", export_path=tmp_path / "store")
    bad.write_text(CONFIG.format(model=model).replace("asyncCommunication: true", ""))
    with pytest.raises(ConfigError, match="asyncCommunication"):
        build_archive(bad, name="vllm", export_path=tmp_path / "store")
    assert not (tmp_path / "store").exists()


def _texts_of(artifact):
    """(name, text) of every member of an artifact folder, .mar or .tar.gz."""
    if artifact.is_dir():
        for path in sorted(artifact.rglob("*")):
            if path.is_file():
                yield str(path.relative_to(artifact)), path.read_bytes()
    elif artifact.suffix == ".mar":
        with zipfile.ZipFile(artifact) as z:
            for name in z.namelist():
                yield name, z.read(name)
    else:
        with tarfile.open(artifact) as t:
            for member in t.getmembers():
                if member.isfile():
                    yield member.name, t.extractfile(member).read()


@pytest.mark.parametrize("fmt", ["no-archive", "mar", "tgz"])
def test_artifacts_hold_no_secrets(tmp_path, config, fmt, monkeypatch):
    """Keys stay out of artifacts even when the environment that builds them has some."""
    from tsvllm.auth import KEY_FILE_ENV, write_key_file
    from tsvllm.guards import SecretsGuard

    key = write_key_file(tmp_path / "key_file.json")
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "key_file.json"))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7")
    monkeypatch.chdir(tmp_path)  # a key_file.json sits in the working directory
    artifact = build_archive(config, name="vllm", fmt=fmt, export_path=tmp_path / "out")
    guard = SecretsGuard()
    members = dict(_texts_of(artifact))
    assert members and not any("key_file" in name for name in members)
    for name, data in members.items():
        text = data.decode("utf-8", errors="replace")
        assert key not in text and "hf_A1b2" not in text, name
        assert not guard.scan(text).categories, (name, guard.scan(text).detail)
