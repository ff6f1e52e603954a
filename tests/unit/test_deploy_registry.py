"""A deployment target is one module plus one entry in tsvllm.deploy.PLATFORMS."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from tsvllm.cli import build_parser
from tsvllm.cli import main as cli
from tsvllm.deploy import PLATFORMS, DeployError, Platform, generate

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "model_configs" / "smollm2-cpu.yaml")


@pytest.fixture
def example_platform(monkeypatch):
    """A platform registered the documented way: a module with assets() and one entry."""
    module = types.ModuleType("example_platform_assets")
    module.assets = lambda target, options: {
        "example.txt": f"{target.name} replicas={options.replicas}\n"
    }
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(PLATFORMS, "example", Platform("Example Cloud", module.__name__))


def test_the_cli_offers_and_runs_a_registered_platform(example_platform, tmp_path, capsys):
    out = tmp_path / "assets"
    assert cli(["deploy", "example", CONFIG, "--out", str(out), "--replicas", "3"]) == 0
    assert (out / "example.txt").read_text() == "smollm2-cpu replicas=3\n"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deploy", "--help"])
    assert "{azureml,k8s,vertex,example}" in capsys.readouterr().out


def test_the_cli_help_names_every_platform(example_platform, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    assert "generate Azure ML, Kubernetes, Vertex AI or Example Cloud assets" in text


def test_a_platform_option_is_refused_on_the_others(capsys, tmp_path):
    """Each platform's own options (from its entry) are refused elsewhere, by the CLI."""
    for platform, entry in PLATFORMS.items():
        other = next(p for p in PLATFORMS if p != platform)
        for option in entry.own_options:
            flag = "--" + option.replace("_", "-")
            value = {"autoscaling": ["keda"], "private": [], "disable_token_auth": []}.get(
                option, ["1"]
            )
            argv = ["deploy", other, CONFIG, "--out", str(tmp_path), flag, *value]
            assert cli(argv) == 2, argv
            assert f"{flag} applies to {platform} only" in capsys.readouterr().err


def test_only_a_multinode_platform_takes_an_engine_over_several_nodes(tmp_path):
    config = tmp_path / "two-nodes.yaml"
    config.write_text(
        "asyncCommunication: true\ndeviceType: gpu\nparallelType: custom\nparallelLevel: 1\n"
        "handler:\n  model_path: org/model\n  vllm_engine_config:\n    nnodes: 2\n"
        "    tensor_parallel_size: 2\n    master_addr: leader\n"
    )
    for platform, entry in PLATFORMS.items():
        if entry.multinode:
            assert generate(platform, config, out=tmp_path / platform)
        else:
            with pytest.raises(DeployError, match="needs Kubernetes"):
                generate(platform, config, out=tmp_path / platform)


def test_an_unknown_platform_names_the_registered_ones(tmp_path):
    with pytest.raises(DeployError, match="use one of azureml, k8s, vertex"):
        generate("heroku", CONFIG, out=tmp_path)
