"""Unit tests for tsvllm.config (typed model-config.yaml). Fast; no vLLM, no TorchServe."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tsvllm.config import (
    ConfigError,
    HandlerConfig,
    ModelConfig,
    TorchrunConfig,
    dump_model_config,
    load_model_config,
    loads_model_config,
    validate_model_config,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "model_configs").glob("*-cpu.yaml"))

GPU_TP4 = """
deviceType: gpu
parallelType: custom
parallelLevel: 4
asyncCommunication: true
handler:
  model_path: /models/llama
  vllm_engine_config:
    tensor_parallel_size: 4
"""


def _load(tmp_path: Path, text: str) -> ModelConfig:
    path = tmp_path / "model-config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_model_config(path)


# --- good configs ---------------------------------------------------------------------------


def test_shipped_configs_exist() -> None:
    names = {p.name for p in SHIPPED}
    assert {"tiny-cpu.yaml", "smollm2-cpu.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_model_config(path)
    assert cfg.deviceType == "cpu"
    assert cfg.asyncCommunication is True
    assert cfg.minWorkers == cfg.maxWorkers == 1
    assert cfg.parallel_size == 1
    assert cfg.handler.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert cfg.handler.vllm_engine_config["enforce_eager"] is True
    assert cfg.handler.served_model_name and len(cfg.handler.served_model_name) == 1
    assert not Path(cfg.handler.model_path).is_absolute()  # rewritten by the archive step


def test_shipped_values() -> None:
    tiny = load_model_config(REPO / "model_configs" / "tiny-cpu.yaml")
    smol = load_model_config(REPO / "model_configs" / "smollm2-cpu.yaml")
    assert tiny.handler.model_path == "models/tiny"
    assert tiny.handler.served_model_name == ["tiny"]
    assert tiny.handler.vllm_engine_config == {
        "max_model_len": 2048,
        "enforce_eager": True,
        "max_num_seqs": 64,
        "dtype": "bfloat16",
    }
    assert smol.handler.model_path == "models/smollm2"
    assert smol.handler.served_model_name == ["smollm2"]
    assert smol.handler.vllm_engine_config["max_num_seqs"] == 32


def test_good_gpu_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, GPU_TP4)
    assert cfg.deviceType == "gpu"
    assert cfg.parallelType == "custom"
    assert cfg.parallel_size == 4
    assert cfg.handler.tensor_parallel_size == 4
    assert cfg.handler.pipeline_parallel_size == 1


def test_good_gpu_tp_times_pp(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        deviceType: gpu
        parallelType: custom
        parallelLevel: 4
        deviceIds: [0, 1, 2, 3]
        minWorkers: 1
        maxWorkers: 2
        asyncCommunication: true
        handler:
          model_path: /models/llama
          vllm_engine_config: {tensor-parallel-size: 2, pipeline_parallel_size: 2}
        """,
    )
    assert cfg.parallel_size == 4
    assert "tensor_parallel_size" in cfg.handler.vllm_engine_config  # hyphens normalised


def test_gpu_single_device_needs_no_parallel_settings(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        deviceType: gpu
        asyncCommunication: true
        handler: {model_path: /m}
        """,
    )
    assert cfg.parallel_size == 1 and cfg.parallelType is None


def test_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "asyncCommunication: true\nhandler: {model_path: m}\n")
    assert (cfg.minWorkers, cfg.maxWorkers) == (1, 1)
    assert (cfg.responseTimeout, cfg.startupTimeout) == (1200, 1200)
    assert cfg.deviceType == "cpu"
    assert cfg.handler.max_body_bytes == 1_048_576
    assert cfg.handler.adapters == {} and cfg.handler.env == {}
    assert cfg.handler.served_model_name is None


def test_handler_normalisation(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        asyncCommunication: true
        handler:
          model_path: m
          served_model_name: solo
          env: {A: 1, B: true, C: false, D: 0.5, E: text}
          vllm_engine_config:
            max-model-len: 512
            enable_lora: true
            hf_overrides: {some-key: 1}
          adapters: {sql: /adapters/sql}
        """,
    )
    h = cfg.handler
    assert h.served_model_name == ["solo"]
    assert h.env == {"A": "1", "B": "1", "C": "0", "D": "0.5", "E": "text"}
    assert h.vllm_engine_config["max_model_len"] == 512
    assert h.vllm_engine_config["hf_overrides"] == {"some-key": 1}  # only top level normalised
    assert h.adapters == {"sql": "/adapters/sql"}


def test_empty_sections_are_empty(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        asyncCommunication: true
        handler:
          model_path: m
          env:
          vllm_engine_config:
        """,
    )
    assert cfg.handler.env == {} and cfg.handler.vllm_engine_config == {}


# --- bad configs: each rejected with the fix in the message ---------------------------------

BAD = [
    pytest.param(
        "handler: {model_path: m}\n",
        "asyncCommunication must be true: VLLMHandler is an async handler; "
        "set asyncCommunication: true",
        id="async-missing",
    ),
    pytest.param(
        "asyncCommunication: false\nhandler: {model_path: m}\n",
        "asyncCommunication must be true: VLLMHandler is an async handler; "
        "set asyncCommunication: true",
        id="async-false",
    ),
    pytest.param(
        "asyncCommunication: 'true'\nhandler: {model_path: m}\n",
        "asyncCommunication: Input should be a valid boolean (got 'true')",
        id="async-quoted",
    ),
    pytest.param(
        GPU_TP4.replace("parallelLevel: 4", "parallelLevel: 2"),
        "parallelLevel 2 does not match tensor_parallel_size 4 × pipeline_parallel_size 1; "
        "set parallelLevel: 4",
        id="parallel-level-mismatch",
    ),
    pytest.param(
        GPU_TP4.replace("parallelType: custom", "parallelType: tp"),
        "start one handler per rank",
        id="parallel-type-tp-gpu",
    ),
    pytest.param(
        GPU_TP4.replace("parallelType: custom", "parallelType: tp"),
        "set parallelType: custom",
        id="parallel-type-tp-gpu-fix",
    ),
    pytest.param(
        GPU_TP4.replace("parallelLevel: 4", "parallelLevel: 4\ndeviceIds: [0, 1]"),
        "list at least 4 deviceIds or remove deviceIds",
        id="device-ids-too-few",
    ),
    pytest.param(
        GPU_TP4.replace("parallelLevel: 4", "parallelLevel: 4\ntorchrun: {nproc-per-node: 4}"),
        "remove torchrun",
        id="torchrun",
    ),
    pytest.param(
        "asyncCommunication: true\nparallelType: custom\nparallelLevel: 1\n"
        "handler: {model_path: m}\n",
        "deviceType cpu needs no parallel settings; remove parallelType/parallelLevel",
        id="parallel-on-cpu",
    ),
    pytest.param(
        "asyncCommunication: true\n"
        "handler: {model_path: m, vllm_engine_config: {tensor_parallel_size: 2}}\n",
        "deviceType cpu runs one engine process; remove "
        "tensor_parallel_size/pipeline_parallel_size or set deviceType: gpu",
        id="tp-on-cpu",
    ),
    pytest.param(
        "asyncCommunication: true\nminWorker: 1\nhandler: {model_path: m}\n",
        "minWorker: unknown key 'minWorker' (did you mean 'minWorkers'?)",
        id="unknown-top-key",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, modle_path: m}\n",
        "handler.modle_path: unknown key 'modle_path' (did you mean 'model_path'?)",
        id="unknown-handler-key",
    ),
    pytest.param(
        "asyncCommunication: true\nmodel_path: m\nhandler: {model_path: m}\n",
        "did you mean 'handler.model_path'?",
        id="handler-key-at-top",
    ),
    pytest.param(
        GPU_TP4.replace("parallelLevel: 4", "parallelLevel: 4\ntorchrun: {nproc_per_node: 4}"),
        "torchrun.nproc_per_node: unknown key 'nproc_per_node' (did you mean 'nproc-per-node'?)",
        id="unknown-torchrun-key",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, vllm_engine_config: {model: x}}\n",
        "handler: model_path is set twice with different values: handler.model_path 'm' and "
        "handler.vllm_engine_config.model 'x'; keep one (handler.model_path)",
        id="engine-model-differs",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, served_model_name: [a],"
        " vllm_engine_config: {served-model-name: x}}\n",
        "served_model_name is set twice with different values: handler.served_model_name "
        "['a'] and handler.vllm_engine_config.served-model-name 'x'; keep one "
        "(handler.served_model_name)",
        id="engine-served-model-name-differs",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m,"
        " vllm_engine_config: {served_model_name: x, served-model-name: y}}\n",
        "served_model_name is set twice",
        id="engine-served-model-name-two-spellings",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m,"
        " vllm_engine_config: {served_model_name: []}}\n",
        "served_model_name is an empty list",
        id="engine-served-model-name-empty",
    ),
    pytest.param(
        "asyncCommunication: true\ndeviceType: gpu\nparallelType: custom\nparallelLevel: 1\n"
        "handler: {model_path: m, served_model_name: [a],"
        " vllm_engine_config: {served_model_name: [a, b]}}\n",
        "keep one (handler.served_model_name)",
        id="engine-served-model-name-superset",
    ),
    pytest.param(
        "asyncCommunication: true\n"
        "handler: {model_path: m, vllm_engine_config: {max_model_len: 1, max-model-len: 2}}\n",
        "max_model_len is set twice",
        id="engine-key-twice",
    ),
    pytest.param(
        "asyncCommunication: true\n"
        "handler: {model_path: m, vllm_engine_config: {tensor_parallel_size: '2'}}\n",
        "tensor_parallel_size must be an integer >= 1",
        id="engine-tp-string",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, adapters: {sql: /a}}\n",
        "set handler.vllm_engine_config.enable_lora: true",
        id="adapters-without-lora",
    ),
    pytest.param(
        "asyncCommunication: true\nminWorkers: 2\nmaxWorkers: 1\nhandler: {model_path: m}\n",
        "maxWorkers 1 is less than minWorkers 2; set maxWorkers: 2",
        id="max-lt-min-workers",
    ),
    pytest.param(
        "asyncCommunication: true\nbatchSize: 4\nhandler: {model_path: m}\n",
        "set batchSize: 1 or remove it",
        id="batch-size",
    ),
    pytest.param(
        "asyncCommunication: true\ncontinuousBatching: true\nhandler: {model_path: m}\n",
        "remove continuousBatching",
        id="continuous-batching",
    ),
    pytest.param(
        "asyncCommunication: true\nminWorkers: '2'\nhandler: {model_path: m}\n",
        "minWorkers: Input should be a valid integer (got '2')",
        id="frontend-int-quoted",
    ),
    pytest.param(
        "asyncCommunication: true\ndeviceType: tpu\nhandler: {model_path: m}\n",
        "deviceType: Input should be 'cpu' or 'gpu'",
        id="device-type",
    ),
    pytest.param(
        "asyncCommunication: true\n",
        "handler: missing required key 'handler'",
        id="handler-missing",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: ''}\n",
        "model_path is empty",
        id="model-path-empty",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, env: {A: null}}\n",
        "handler.env: A has no value",
        id="env-null",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, served_model_name: []}\n",
        "served_model_name is an empty list",
        id="served-name-empty",
    ),
    pytest.param(
        "asyncCommunication: true\nhandler: {model_path: m, max_body_bytes: 0}\n",
        "handler.max_body_bytes: Input should be greater than 0",
        id="max-body-bytes",
    ),
    pytest.param("", "the file is empty", id="empty-file"),
    pytest.param("- a\n- b\n", "the top level must be a mapping", id="not-a-mapping"),
    pytest.param("a: [\n", "not valid YAML", id="bad-yaml"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_config_rejected(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert expected in message, message
    assert str(tmp_path / "model-config.yaml") in message  # names the file


def test_config_error_lists_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(
            tmp_path,
            """
            asyncCommunication: true
            minWorker: 1
            deviceType: tpu
            handler: {modle_path: m}
            """,
        )
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.problems) == 4, err.problems
    lines = str(err).splitlines()
    assert lines[0].startswith("invalid model config ")
    assert all(line.startswith("  ") for line in lines[1:])


def test_cross_field_problems_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "batchSize: 4\nminWorkers: 3\nhandler: {model_path: m}\n")
    problems = info.value.problems
    assert any(p.startswith("asyncCommunication must be true") for p in problems)
    assert any(p.startswith("batchSize 4") for p in problems)
    assert any(p.startswith("maxWorkers 1 is less than minWorkers 3") for p in problems)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_model_config(tmp_path / "nope.yaml")


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="set asyncCommunication: true"):
        ModelConfig(handler=HandlerConfig(model_path="m"))
    cfg = ModelConfig(asyncCommunication=True, handler=HandlerConfig(model_path="m"))
    assert cfg.parallel_size == 1


# --- dumping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        *(p.read_text(encoding="utf-8") for p in SHIPPED),
        GPU_TP4,
        """
        asyncCommunication: true
        maxBatchDelay: 0
        clientTimeoutInMills: 5000
        handler:
          model_path: m
          served_model_name: [a, b]
          chat_template: "{{ messages }}"
          adapters: {sql: /adapters/sql}
          env: {X: 1}
          vllm_engine_config: {enable_lora: true, quantization: null, hf_overrides: {a-b: 1}}
          max_body_bytes: 10
        """,
    ],
)
def test_to_yaml_round_trips(tmp_path: Path, text: str) -> None:
    cfg = loads_model_config(textwrap.dedent(text))
    assert loads_model_config(cfg.to_yaml()) == cfg
    out = dump_model_config(cfg, tmp_path / "sub" / "model-config.yaml")
    assert load_model_config(out) == cfg


def test_to_yaml_is_readable() -> None:
    cfg = load_model_config(REPO / "model_configs" / "tiny-cpu.yaml")
    data = yaml.safe_load(cfg.to_yaml())
    keys = list(data)
    assert keys[-1] == "handler"  # frontend keys first
    assert "batchSize" not in keys and "parallelType" not in keys  # None omitted
    assert "adapters" not in data["handler"]  # empty omitted
    assert data["minWorkers"] == 1 and data["asyncCommunication"] is True  # defaults written


def test_to_yaml_uses_aliases() -> None:
    run = TorchrunConfig.model_validate({"nproc-per-node": 2})
    assert run.nproc_per_node == 2
    cfg = ModelConfig.model_construct(
        asyncCommunication=True, torchrun=run, handler=HandlerConfig(model_path="m")
    )
    assert yaml.safe_load(cfg.to_yaml())["torchrun"] == {"nproc-per-node": 2}


# --- module hygiene -------------------------------------------------------------------------


@pytest.mark.parametrize("model", [ModelConfig, HandlerConfig, TorchrunConfig])
def test_every_field_is_described(model: type) -> None:
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert not missing


def test_validate_model_config_accepts_dict() -> None:
    cfg = validate_model_config({"asyncCommunication": True, "handler": {"model_path": "m"}})
    assert cfg.handler.model_path == "m"


def test_import_does_not_pull_in_vllm() -> None:
    code = (
        "import sys, tsvllm.config; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'ts')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- TorchServe's spellings and warnings ----------------------------------------------------


@pytest.mark.parametrize("key", ["served_model_name", "served-model-name"])
def test_served_model_name_in_engine_config_is_lifted(tmp_path: Path, key: str) -> None:
    cfg = _load(
        tmp_path,
        f"""
        asyncCommunication: true
        handler:
          model_path: m
          vllm_engine_config: {{max_model_len: 64, {key}: [a, b]}}
        """,
    )
    assert cfg.handler.served_model_name == ["a", "b"]
    assert cfg.handler.vllm_engine_config == {"max_model_len": 64}


def test_served_model_name_in_both_places_alike_is_fine(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        asyncCommunication: true
        handler:
          model_path: m
          served_model_name: solo
          vllm_engine_config: {served_model_name: [solo]}
        """,
    )
    assert cfg.handler.served_model_name == ["solo"]


def test_engine_model_is_model_path(tmp_path: Path) -> None:
    # TorchServe's handler took vllm_engine_config.model when model_path was not set
    cfg = _load(tmp_path, "asyncCommunication: true\nhandler: {vllm_engine_config: {model: x}}\n")
    assert cfg.handler.model_path == "x"
    assert "model" not in cfg.handler.vllm_engine_config
    same = _load(
        tmp_path,
        "asyncCommunication: true\nhandler: {model_path: x, vllm_engine_config: {model: x}}\n",
    )
    assert same == cfg


def test_lifted_config_round_trips(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        asyncCommunication: true
        handler: {model_path: m, vllm_engine_config: {served_model_name: [a]}}
        """,
    )
    assert loads_model_config(cfg.to_yaml()) == cfg
    assert yaml.safe_load(cfg.to_yaml())["handler"]["served_model_name"] == ["a"]


@pytest.mark.parametrize(
    ("text", "device", "parallel"),
    [
        ("deviceType: GPU\nparallelType: Custom\nparallelLevel: 1\n", "gpu", "custom"),
        ("deviceType: CPU\n", "cpu", None),
    ],
)
def test_device_and_parallel_type_any_case(tmp_path, text, device, parallel) -> None:
    # TorchServe's frontend lower-cases both
    cfg = _load(tmp_path, text + "asyncCommunication: true\nhandler: {model_path: m}\n")
    assert (cfg.deviceType, cfg.parallelType) == (device, parallel)


TP4_FIX = "set parallelType: custom and parallelLevel: 4"
NO_PARALLEL = GPU_TP4.replace("parallelType: custom\nparallelLevel: 4\n", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(GPU_TP4, [], id="custom-and-level"),
        pytest.param(
            NO_PARALLEL,
            [
                "tensor_parallel_size 4 × pipeline_parallel_size 1 needs 4 GPUs per worker but "
                "parallelType/parallelLevel are not set, so TorchServe hands each worker one "
                "GPU id: the engine takes the first 4 GPUs, which TorchServe may also hand to "
                "another worker or model; " + TP4_FIX
            ],
            id="neither",
        ),
        pytest.param(
            GPU_TP4.replace("parallelType: custom\n", ""),
            ["but parallelType is not set"],
            id="no-parallel-type",
        ),
        pytest.param(
            GPU_TP4.replace("parallelLevel: 4\n", ""),
            ["but parallelLevel is not set"],
            id="no-parallel-level",
        ),
        pytest.param(
            NO_PARALLEL.replace("deviceType: gpu", "deviceType: gpu\nmaxWorkers: 2"),
            ["are not set"],
            id="max-workers-2",
        ),
        pytest.param(
            "deviceType: gpu\nmaxWorkers: 2\nasyncCommunication: true\nhandler: {model_path: m}\n",
            [],
            id="one-gpu-per-worker",  # the handler pins each worker to its gpu_id
        ),
        pytest.param(
            "asyncCommunication: true\nmaxWorkers: 2\nhandler: {model_path: m}\n", [], id="cpu"
        ),
    ],
)
def test_warnings(tmp_path: Path, text: str, expected: list[str]) -> None:
    warnings = _load(tmp_path, text).warnings()
    assert len(warnings) == len(expected), warnings
    for got, want in zip(warnings, expected, strict=True):
        assert want in got
        assert got.endswith(TP4_FIX)


@pytest.mark.parametrize(
    "text",
    [
        NO_PARALLEL.replace("deviceType: gpu", "deviceType: gpu\nminWorkers: 2\nmaxWorkers: 2"),
        GPU_TP4.replace("parallelLevel: 4\n", "minWorkers: 2\nmaxWorkers: 2\n"),
    ],
)
def test_several_workers_sharing_gpus_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="minWorkers 2: .* would share GPUs; " + TP4_FIX):
        _load(tmp_path, text)


def test_device_ids_too_few_without_parallel_level(tmp_path: Path) -> None:
    # the handler pins the engine to the first tensor_parallel_size of deviceIds
    with pytest.raises(ConfigError, match="list at least 4 deviceIds"):
        _load(tmp_path, NO_PARALLEL.replace("deviceType: gpu", "deviceType: gpu\ndeviceIds: [0]"))


def test_shipped_configs_have_no_warnings() -> None:
    for path in sorted((REPO / "model_configs").glob("*.yaml")):
        assert load_model_config(path).warnings() == [], path.name


@pytest.mark.parametrize(
    ("retry", "warned"), [(None, True), (299, True), (1199, True), (1200, False)]
)
def test_a_multinode_engine_needs_torchserve_to_retry_a_failed_load(retry, warned):
    """Its load waits for the worker nodes; one that was away needs another load."""
    data = {
        "asyncCommunication": True,
        "startupTimeout": 600,
        "handler": {
            "model_path": "m",
            "vllm_engine_config": {"nnodes": 2, "tensor_parallel_size": 2, "master_addr": "x"},
        },
    }
    if retry is not None:
        data["maxRetryTimeoutInSec"] = retry
    warnings = validate_model_config(data).warnings()
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].endswith("set maxRetryTimeoutInSec: 2400 (4 × startupTimeout)")
    single = {**data, "handler": {"model_path": "m"}}
    assert validate_model_config(single).warnings() == []
