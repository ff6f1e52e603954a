"""Launcher: GPU detection, device/TP placement and the model config it writes."""

from __future__ import annotations

import pytest

from tsvllm.host.launcher import (
    DEFAULT_GUARDS,
    LaunchError,
    Placement,
    count_gpus,
    load_guards,
    model_config_from_flags,
    place,
)


@pytest.mark.parametrize(
    ("env", "probed", "expected"),
    [
        ({}, 0, 0),
        ({}, 1, 1),
        ({}, 4, 4),
        ({"CUDA_VISIBLE_DEVICES": ""}, 4, 0),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 4, 1),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 8, 4),
        ({"CUDA_VISIBLE_DEVICES": "2,-1,3"}, 8, 1),
    ],
)
def test_count_gpus_honours_cuda_visible_devices(env, probed, expected):
    assert count_gpus(env, probe=lambda: probed) == expected


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(0, Placement("cpu", 1)), (1, Placement("gpu", 1)), (4, Placement("gpu", 4))],
)
def test_auto_placement(gpus, expected):
    assert place(device="auto", tensor_parallel_size="auto", gpus=gpus) == expected


@pytest.mark.parametrize(
    ("device", "tp", "gpus", "needle"),
    [
        ("gpu", "auto", 0, "no GPU is visible"),
        ("gpu", "8", 4, "only 4 GPU"),
        ("cpu", "2", 0, "needs GPUs"),
        ("auto", "zero", 1, "use auto or a number"),
        ("auto", "0", 1, "at least 1"),
    ],
)
def test_impossible_placements_are_refused(device, tp, gpus, needle):
    with pytest.raises(LaunchError, match=needle):
        place(device=device, tensor_parallel_size=tp, gpus=gpus)


def config_for(gpus: int):
    placement = place(device="auto", tensor_parallel_size="auto", gpus=gpus)
    return model_config_from_flags(
        model_path="/models/m",
        model_name="m",
        placement=placement,
        engine={"max_num_seqs": 8, "max_model_len": None, "dtype": "auto"},
        startup_timeout=600,
    )


def test_no_gpu_gives_a_cpu_config_without_parallel_settings():
    cfg = config_for(0)
    assert cfg.deviceType == "cpu" and cfg.parallelType is None and cfg.parallelLevel is None
    engine = cfg.handler.vllm_engine_config
    assert engine["enforce_eager"] is True and "tensor_parallel_size" not in engine
    assert "max_model_len" not in engine  # unset flags are not written
    assert cfg.asyncCommunication is True


def test_one_gpu_gives_tp1_without_parallel_type():
    cfg = config_for(1)
    assert cfg.deviceType == "gpu" and cfg.parallelType is None
    assert cfg.handler.vllm_engine_config["tensor_parallel_size"] == 1


def test_four_gpus_give_tp4_with_parallel_level_4():
    cfg = config_for(4)
    assert (cfg.deviceType, cfg.parallelType, cfg.parallelLevel) == ("gpu", "custom", 4)
    assert cfg.handler.vllm_engine_config["tensor_parallel_size"] == 4


def test_guards_flag(tmp_path):
    assert load_guards(None) is None
    assert load_guards("default") == DEFAULT_GUARDS
    f = tmp_path / "g.yaml"
    f.write_text("guards:\n  pii: {mode: block}\n")
    assert load_guards(str(f)) == {"pii": {"mode": "block"}}
    with pytest.raises(LaunchError, match="no such file"):
        load_guards(str(tmp_path / "missing.yaml"))


def test_busy_port_and_missing_java_are_clear_errors(tmp_path, monkeypatch, capsys):
    import socket

    from tsvllm.host import launcher

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["--model-id", str(model), "--model-store", str(tmp_path / "store")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert launcher.main([*args, "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err

    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert launcher.main(args) == 2
    assert "Java not found" in capsys.readouterr().err
