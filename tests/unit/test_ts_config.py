"""TorchServe settings we ship and generate keep the secure defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.host.torchserve import Ports, ts_config_text

REPO = Path(__file__).resolve().parents[2]


def parse(text: str) -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in text.splitlines() if ln.strip() and ln[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize(
    "props",
    [
        parse((REPO / "docker" / "config.properties").read_text()),
        parse(ts_config_text(ports=Ports.free())),
    ],
    ids=["docker/config.properties", "generated"],
)
def test_loopback_token_auth_no_model_api(props):
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props[key] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    # bounded, and above the handler's own limit so that the handler answers (OpenAI body)
    assert 1 << 20 < int(props["max_request_size"]) <= 8 << 20
    # bounded, and room for a burst of hundreds of streams (TorchServe's 100 answers 503)
    assert 256 < int(props["job_queue_size"]) <= 4096


def test_docker_config_matches_the_generated_defaults():
    """All but ``plugins_path``, a path of the machine (the file's comment says how to pass
    it on the command line)."""
    text = (REPO / "docker" / "config.properties").read_text()
    generated = parse(ts_config_text())
    del generated["plugins_path"]
    assert parse(text) == generated
    assert '--plugins-path "$(python -m tsvllm.host.frontend_plugin)"' in text


def test_launch_the_container_and_the_shipped_file_share_the_size_caps():
    """One definition (tsvllm.contract): the values docs/TORCHSERVE.md's table states."""
    from tsvllm.host import entrypoint

    _, container_extra, _ = entrypoint.torchserve_settings({})
    configs = {
        "docker/config.properties": parse((REPO / "docker" / "config.properties").read_text()),
        "tsvllm launch": parse(ts_config_text()),
        "container": parse(ts_config_text(extra=container_extra)),
    }
    for where, props in configs.items():
        assert props["max_request_size"] == str(8 * 1024 * 1024), where
        assert props["max_response_size"] == str(32 * 1024 * 1024), where
    assert configs["docker/config.properties"]["default_response_timeout"] == "300"
    assert configs["tsvllm launch"]["default_response_timeout"] == "300"
    # the container's frontend default follows the model's responseTimeout
    assert configs["container"]["default_response_timeout"] == "1200"


def test_launch_and_the_container_default_to_the_model_configs_timeouts(tmp_path):
    from tsvllm.config import ModelConfig
    from tsvllm.host import entrypoint
    from tsvllm.host.launcher import Placement, model_config_from_flags, parse_args

    fields = ModelConfig.model_fields
    assert fields["startupTimeout"].default == fields["responseTimeout"].default == 1200
    launched = model_config_from_flags(
        model_path="m",
        model_name="m",
        placement=Placement(device="cpu", tensor_parallel_size=1),
        engine={},
        startup_timeout=parse_args(["--model_id", "m"]).startup_timeout,
    )
    container = entrypoint.model_config({"TSVLLM_DEVICE": "cpu"}, model="/m", gpus=0)
    for cfg in (launched, container):
        assert (cfg.startupTimeout, cfg.responseTimeout) == (1200, 1200)


def test_management_on_a_unix_socket(tmp_path):
    from tsvllm.host.torchserve import ts_config_text

    text = ts_config_text(token_auth=False, management_socket=tmp_path / "m.sock")
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["management_address"] == f"unix:{tmp_path / 'm.sock'}"
    assert props["use_native_io"] == "true"
    assert props["disable_token_authorization"] == "true"


def test_models_may_come_from_the_store_only(tmp_path):
    props = parse(ts_config_text(model_store=tmp_path / "store"))
    assert props["model_store"] == str(tmp_path / "store")
    import re

    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{tmp_path}/store/x.mar")
    assert not allowed.fullmatch("https://example.com/x.mar")
    assert not allowed.fullmatch(f"file://{tmp_path}/other/x.mar")


@pytest.mark.parametrize(("cores", "want"), [(1, 1), (2, 1), (4, 1), (5, None), (64, None)])
def test_frontend_threads_one_on_small_machines_else_torchserves_default(cores, want):
    from tsvllm.host.torchserve import frontend_threads

    assert frontend_threads(cores) == want


def test_netty_threads_set_both_thread_pools_and_extra_still_wins():
    props = parse(ts_config_text(netty_threads=1))
    assert props["number_of_netty_threads"] == props["netty_client_threads"] == "1"
    assert "number_of_netty_threads" not in parse(ts_config_text())  # TorchServe's default
    props = parse(ts_config_text(netty_threads=1, extra={"number_of_netty_threads": "8"}))
    assert props["number_of_netty_threads"] == "8"


def test_frontend_threads_without_sched_getaffinity(monkeypatch):
    import os

    from tsvllm.host.torchserve import frontend_threads

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # e.g. macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert frontend_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert frontend_threads() is None
