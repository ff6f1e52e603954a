"""The container entrypoint's environment handling (no server: see tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsvllm.contract import READINESS_ROUTE, VERTEX_PREDICT_ROUTE
from tsvllm.host import entrypoint as ep
from tsvllm.host.entrypoint import EntrypointError


def model_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    return root


def test_sources_in_order_of_precedence(tmp_path):
    env = {"MODEL_ID": "org/m", "AIP_STORAGE_URI": "gs://b/m", "AZUREML_MODEL_DIR": "/x"}
    assert ep.model_source(env) == ("AZUREML_MODEL_DIR", "/x")
    assert ep.model_source({**env, "MODEL_PATH": "/m"}) == ("MODEL_PATH", "/m")
    assert ep.model_source({"MODEL_ID": "org/m", "AIP_STORAGE_URI": " "}) == ("MODEL_ID", "org/m")
    with pytest.raises(EntrypointError, match="MODEL_PATH.*MODEL_ID"):
        ep.model_source({})


def test_azureml_model_dir_finds_the_one_model_folder_under_the_mount(tmp_path):
    folder = model_dir(tmp_path / "mount" / "tiny-model" / "1" / "tiny")
    env = {"AZUREML_MODEL_DIR": str(tmp_path / "mount")}
    assert ep.resolve_model(env, cache=tmp_path / "c") == str(folder)


def test_model_folder_errors_name_the_variable(tmp_path):
    with pytest.raises(EntrypointError, match=r"AZUREML_MODEL_DIR=.*no such folder"):
        ep.resolve_model({"AZUREML_MODEL_DIR": str(tmp_path / "nope")}, cache=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EntrypointError, match=r"MODEL_PATH=.*no model folder"):
        ep.resolve_model({"MODEL_PATH": str(tmp_path / "empty")}, cache=tmp_path)
    model_dir(tmp_path / "two" / "a")
    model_dir(tmp_path / "two" / "b")
    with pytest.raises(EntrypointError, match="several model folders.*set MODEL_PATH"):
        ep.resolve_model({"AZUREML_MODEL_DIR": str(tmp_path / "two")}, cache=tmp_path)


def test_hub_id_passes_through_online_and_must_be_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert ep.resolve_model({"MODEL_ID": "org/model"}, cache=tmp_path) == "org/model"
    with pytest.raises(EntrypointError, match="HF_HUB_OFFLINE=1: not in the Hugging Face cache"):
        ep.resolve_model({"MODEL_ID": "org/model", "HF_HUB_OFFLINE": "1"}, cache=tmp_path)
    with pytest.raises(EntrypointError, match="MODEL_ID=not an id"):
        ep.resolve_model({"MODEL_ID": "not an id"}, cache=tmp_path)


class FakeS3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        outer = self

        class Pages:
            def paginate(self, *, Bucket, Prefix):
                keys = [k for k in outer.objects if k.startswith(Prefix)]
                return [
                    {"Contents": [{"Key": k} for k in keys[:1]]},
                    {"Contents": [{"Key": k} for k in keys[1:]]},
                ]

        return Pages()

    def download_file(self, bucket, key, filename):
        Path(filename).write_bytes(self.objects[key])


def test_s3_download_copies_the_folder_and_nothing_beside_it(tmp_path):
    s3 = FakeS3({"m/config.json": b"{}", "m/sub/w.bin": b"w", "m2/x": b"no", "m/": b""})
    assert ep.download_s3("s3://bucket/m", tmp_path, client=s3) == 2
    assert (tmp_path / "config.json").read_bytes() == b"{}"
    assert (tmp_path / "sub" / "w.bin").read_bytes() == b"w"
    assert not (tmp_path / "x").exists()


def test_objects_outside_the_destination_are_refused(tmp_path):
    s3 = FakeS3({"m/../../evil": b"x"})
    with pytest.raises(EntrypointError, match="outside"):
        ep.download_s3("s3://bucket/m", tmp_path / "d", client=s3)


def test_storage_uri_must_be_gs_and_not_empty(tmp_path):
    with pytest.raises(EntrypointError, match="AIP_STORAGE_URI=s3://b/m: Vertex AI gives a gs://"):
        ep.resolve_model({"AIP_STORAGE_URI": "s3://b/m"}, cache=tmp_path)
    with pytest.raises(EntrypointError, match="no bucket"):
        ep._split_uri("gs:///m", "gs")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("--max-model-len 4096 --enforce-eager", {"max_model_len": 4096, "enforce_eager": True}),
        (
            "--gpu-memory-utilization=0.9 --dtype bfloat16",
            {"gpu_memory_utilization": 0.9, "dtype": "bfloat16"},
        ),
        ("--no-enable-prefix-caching", {"no_enable_prefix_caching": True}),
        ("--lora-modules a=/x b=/y", {"lora_modules": ["a=/x", "b=/y"]}),
        (
            "--override-generation-config '{\"temperature\": 0}'",
            {"override_generation_config": '{"temperature": 0}'},
        ),
    ],
)
def test_vllm_args_become_engine_config_keys(text, expected):
    assert ep.parse_vllm_args(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4096", "'4096' is not after a --flag"),
        ("--dtype a --dtype b", "--dtype is given twice"),
        ("--model x", "set the model with MODEL_PATH or MODEL_ID"),
        ("--tensor-parallel-size 2", "use TENSOR_PARALLEL_SIZE"),
        ("--served-model-name x", "use SERVED_MODEL_NAME"),
        ("--chat-template 'unclosed", "cannot split"),
        ("-tp 2", "long form"),
    ],
)
def test_bad_vllm_args_are_refused_naming_the_flag(text, message):
    with pytest.raises(EntrypointError, match=message):
        ep.parse_vllm_args(text)


def test_cpu_config_from_the_environment(tmp_path):
    env = {
        "SERVED_MODEL_NAME": "tiny, tiny-alias",
        "VLLM_ARGS": "--max-model-len 2048 --lora-modules sql=/a --enable-lora",
        "TSVLLM_STARTUP_TIMEOUT": "300",
        "TSVLLM_DEVICE": "cpu",
    }
    cfg = ep.model_config(env, model="/models/tiny", gpus=0)
    assert cfg.deviceType == "cpu" and cfg.startupTimeout == 300
    assert cfg.handler.model_path == "/models/tiny"
    assert cfg.handler.served_model_name == ["tiny", "tiny-alias"]
    assert cfg.handler.adapters == {"sql": "/a"}
    assert cfg.handler.vllm_engine_config["max_model_len"] == 2048
    assert "lora_modules" not in cfg.handler.vllm_engine_config


def test_lora_modules_must_be_name_equals_path():
    with pytest.raises(EntrypointError, match="--lora-modules 'sql': write each adapter as"):
        ep.model_config({"VLLM_ARGS": "--lora-modules sql"}, model="/m", gpus=0)


def test_tensor_parallel_over_a_gpu_config_file_updates_the_parallel_level():
    repo = Path(__file__).resolve().parents[2]
    env = {
        "TSVLLM_CONFIG": str(repo / "model_configs" / "qwen3-8b.yaml"),
        "TENSOR_PARALLEL_SIZE": "2",
    }
    cfg = ep.model_config(env, model="Qwen/Qwen3-8B")
    assert (cfg.parallelType, cfg.parallelLevel) == ("custom", 2)


def test_gpu_tensor_parallel_sets_the_parallel_level():
    cfg = ep.model_config({"TENSOR_PARALLEL_SIZE": "4"}, model="org/m", gpus=4)
    assert (cfg.deviceType, cfg.parallelType, cfg.parallelLevel) == ("gpu", "custom", 4)
    with pytest.raises(EntrypointError, match="TENSOR_PARALLEL_SIZE 8, but only 4 GPU"):
        ep.model_config({"TENSOR_PARALLEL_SIZE": "8"}, model="org/m", gpus=4)
    with pytest.raises(EntrypointError, match="TENSOR_PARALLEL_SIZE='two' is not a whole number"):
        ep.model_config(
            {"TENSOR_PARALLEL_SIZE": "two", "VLLM_ARGS": "--distributed-executor-backend ray"},
            model="org/m",
            gpus=4,
        )


def test_a_config_file_is_the_base_and_the_environment_overrides_it(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {
        "TSVLLM_CONFIG": str(repo / "model_configs" / "tiny-cpu.yaml"),
        "VLLM_ARGS": "--max-model-len 1024",
    }
    cfg = ep.model_config(env, model="/m")
    assert cfg.handler.model_path == "/m"
    assert cfg.handler.served_model_name == ["tiny"]
    assert cfg.handler.vllm_engine_config["max_model_len"] == 1024
    assert cfg.handler.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}


def test_vertex_routes_must_be_the_ones_served():
    ep.check_vertex_routes(
        {"AIP_PREDICT_ROUTE": VERTEX_PREDICT_ROUTE, "AIP_HEALTH_ROUTE": READINESS_ROUTE}
    )
    ep.check_vertex_routes({"AIP_HEALTH_ROUTE": "/alive"})
    with pytest.raises(EntrypointError, match=r"AIP_PREDICT_ROUTE=/predict: .*predictRoute"):
        ep.check_vertex_routes({"AIP_PREDICT_ROUTE": "/predict"})
    with pytest.raises(EntrypointError, match=r"AIP_HEALTH_ROUTE=/health: .*healthRoute"):
        ep.check_vertex_routes({"AIP_HEALTH_ROUTE": "/health"})


def test_torchserve_settings_bind_inference_publicly_and_keep_the_rest_on_loopback():
    ports, extra, token_auth = ep.torchserve_settings({})
    assert (ports.inference, ports.management, ports.metrics) == (8080, 8081, 8082)
    assert extra["inference_address"] == "http://0.0.0.0:8080"
    assert extra["metrics_address"] == "http://127.0.0.1:8082"
    assert "management_address" not in extra  # ts_config_text's loopback default stays
    assert token_auth is True
    ports, extra, token_auth = ep.torchserve_settings(
        {"AIP_HTTP_PORT": "9000", "TSVLLM_BIND": "127.0.0.1", "TSVLLM_DISABLE_TOKEN_AUTH": "true"}
    )
    assert (ports.inference, ports.metrics) == (9000, 9002)
    assert extra["inference_address"] == "http://127.0.0.1:9000"
    assert token_auth is False
    with pytest.raises(EntrypointError, match="AIP_HTTP_PORT='99999' is not a port"):
        ep.torchserve_settings({"AIP_HTTP_PORT": "99999"})


def test_main_reports_a_bad_environment_and_exits_2(tmp_path, capsys):
    code = ep.main([], env={"TSVLLM_WORKDIR": str(tmp_path)})
    assert code == 2
    assert "no model given" in capsys.readouterr().err


def test_ready_probe_fails_when_nothing_listens(tmp_path):
    env = {"TSVLLM_WORKDIR": str(tmp_path), "PORT": "1"}
    assert ep.main(["--probe", "ready"], env=env) == 1
    assert ep.main(["--probe", "alive"], env=env) == 1


@pytest.mark.parametrize(
    ("env", "gpus", "free_mib", "refused"),
    [
        ({"TSVLLM_DEVICE": "cpu"}, 0, 62, True),  # a container's default 64 MB
        ({"TSVLLM_DEVICE": "cpu"}, 0, 1000, False),  # --shm-size=1g
        ({"TSVLLM_DEVICE": "gpu", "TENSOR_PARALLEL_SIZE": "2"}, 2, 500, True),  # 2 workers
        ({"TSVLLM_DEVICE": "gpu"}, 1, 62, False),  # one GPU: vLLM runs one process
    ],
)
def test_too_little_shared_memory_stops_before_the_start_naming_the_fix(
    tmp_path, monkeypatch, env, gpus, free_mib, refused
):
    import shutil

    cfg = ep.model_config(env, model="/models/tiny", gpus=gpus)
    usage = shutil.disk_usage(tmp_path)._replace(free=free_mib << 20)
    monkeypatch.setattr(ep.shutil, "disk_usage", lambda _: usage)
    if not refused:
        ep.check_shared_memory(cfg, env, shm=tmp_path)
        return
    with pytest.raises(EntrypointError) as info:
        ep.check_shared_memory(cfg, env, shm=tmp_path)
    assert f"has {free_mib} MiB free" in str(info.value) and "--shm-size" in str(info.value)
