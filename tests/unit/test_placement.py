"""GPU placement (tsvllm.worker.placement) against a model of TorchServe 0.12's frontend.

``torchserve_workers`` re-states what the Java frontend does (WorkLoadManager.addThreads,
WorkerThread.getDeviceIds, WorkerLifeCycle.startWorkerPython) so every combination of
TP×PP, worker count, parallelType and frontend CUDA_VISIBLE_DEVICES is checked: either every
worker gets its own TP×PP physical GPUs, or every worker refuses with the reason.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import pytest

from tsvllm.config import ConfigError, validate_model_config
from tsvllm.worker import placement as pl
from tsvllm.worker.placement import GpuView, parse_ids, place, torchserve_gpus


def config(
    *, tp=1, pp=1, workers=1, max_workers=None, custom=None, device_ids=None, env=None, nnodes=1
):
    engine = {"tensor_parallel_size": tp, "pipeline_parallel_size": pp}
    if nnodes > 1:  # the leader of an engine across nnodes hosts
        engine.update(nnodes=nnodes, master_addr="10.0.0.1", master_port=29500)
    data = {
        "minWorkers": workers,
        "maxWorkers": max_workers or workers,
        "deviceType": "gpu",
        "asyncCommunication": True,
        "handler": {"model_path": "org/model", "vllm_engine_config": engine},
    }
    if custom:
        data.update(parallelType="custom", parallelLevel=tp * pp // nnodes)
    if device_ids is not None:
        data["deviceIds"] = device_ids
    if env:
        data["handler"]["env"] = env
    return validate_model_config(data)


def torchserve_workers(cfg, *, count, frontend_visible=None, global_counter=0):
    """(gpu_id, the worker's CUDA_VISIBLE_DEVICES) for each worker the frontend starts."""
    level = cfg.parallelLevel if cfg.parallelType and (cfg.parallelLevel or 0) > 0 else 0
    ids = cfg.deviceIds
    pool = len(ids) if ids else count
    stride = level or 1
    # ModelManager.updateModel: with a parallelLevel on gpu, at most pool // level workers
    workers = min(cfg.minWorkers, pool // level) if level else cfg.minWorkers
    model_counter, out = 0, []
    for _ in range(workers):
        if ids or level:  # the model's counter: getAndAccumulate (the value before)
            gpu, model_counter = model_counter, (model_counter + stride) % pool
            if level == 0:
                gpu = ids[gpu]
        else:  # the frontend's counter: accumulateAndGet(++prev % max), the value after
            global_counter = (global_counter + 1) % pool
            gpu = global_counter
        if level:
            logical = ids[gpu : gpu + level] if ids else list(range(gpu, gpu + level))
            visible = ",".join(map(str, logical))  # written over the inherited value
        else:
            visible = frontend_visible
        out.append((gpu, visible))
    return out


def views(cfg, *, count, frontend_visible=None, smi=None):
    smi = tuple(range(count)) if smi is None else smi
    return [
        GpuView(
            gpu_id=gpu,
            worker_visible=visible,
            frontend_visible=frontend_visible,
            frontend_known=True,
            smi_indices=smi,
        )
        for gpu, visible in torchserve_workers(
            cfg,
            count=len(torchserve_gpus(smi, frontend_visible)),
            frontend_visible=frontend_visible,
        )
    ]


# -- the frontend's GPU list ----------------------------------------------------------------


def test_parse_ids_like_torchserve():
    assert parse_ids(None) == []
    assert parse_ids("") == []
    assert parse_ids("0, 1,1 ,2") == [0, 1, 2]
    assert parse_ids("GPU-1234") is None
    assert parse_ids("0,a") is None


def test_torchserve_gpus_filters_nvidia_smi_by_the_frontend_visible_devices():
    smi = tuple(range(8))
    assert torchserve_gpus(smi, None) == list(range(8))
    assert torchserve_gpus(smi, "4,5,6,7") == [4, 5, 6, 7]
    assert torchserve_gpus(smi, "7,6,5,4") == [4, 5, 6, 7]  # nvidia-smi's order
    assert torchserve_gpus(smi, "6,9") == [6]  # a GPU nvidia-smi does not list is not counted
    assert torchserve_gpus(smi, None, number_of_gpu=2) == [0, 1]
    assert torchserve_gpus(None, "3,1") == [1, 3]
    assert torchserve_gpus(None, None) is None


# -- every combination: disjoint physical GPUs, or every worker refuses ------------------------


@pytest.mark.parametrize("frontend_visible, smi", [(None, 4), ("4,5,6,7", 8), ("1,3,5,7", 8)])
@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (8, 1), (3, 1)])
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("custom", [True, False])
def test_disjoint_or_refused(frontend_visible, smi, tp, pp, workers, custom):
    n = tp * pp
    if not custom and n > 1 and workers > 1:
        custom = True  # covered below: without custom only one worker may take n GPUs
    cfg = config(tp=tp, pp=pp, workers=workers, custom=custom)
    visible = torchserve_gpus(tuple(range(smi)), frontend_visible)
    results = []
    for view in views(cfg, count=smi, frontend_visible=frontend_visible, smi=tuple(range(smi))):
        try:
            results.append(place(cfg, view))
        except ConfigError as exc:
            results.append(exc)
    if custom and n > len(visible):
        assert results == []  # the frontend refuses to register it (capacity 0)
    elif workers * n <= len(visible) or custom:
        devices = [d for r in results for d in r.devices]
        assert all(len(r.devices) == n for r in results)
        started = min(workers, len(visible) // n)  # the frontend caps a custom model
        assert len(set(devices)) == len(devices) == started * n
        assert {int(d) for d in devices} <= set(visible)
        if started < workers:
            assert all(f"runs only {started} worker(s)" in " ".join(r.warnings) for r in results)
    else:
        assert all(isinstance(r, ConfigError) for r in results)
        assert f"= {workers * n} GPUs, but {len(visible)} are available" in str(results[0])


def test_four_single_gpu_workers_under_4567_get_4_to_7():
    cfg = config(workers=4)
    placed = [place(cfg, v) for v in views(cfg, count=8, frontend_visible="4,5,6,7")]
    # the frontend's counter starts at 1: the first worker gets logical 1
    assert [p.logical for p in placed] == [(1,), (2,), (3,), (0,)]
    assert sorted(p.visible for p in placed) == ["4", "5", "6", "7"]


def test_custom_pairs_under_4567_are_physical_not_logical():
    cfg = config(tp=2, workers=2, custom=True)
    placed = [place(cfg, v) for v in views(cfg, count=8, frontend_visible="4,5,6,7")]
    assert [p.visible for p in placed] == ["4,5", "6,7"]
    assert [p.logical for p in placed] == [(0, 1), (2, 3)]


def test_three_workers_of_two_on_four_gpus_run_as_two_with_a_warning():
    cfg = config(tp=2, workers=3, custom=True)
    placed = [place(cfg, v) for v in views(cfg, count=4)]
    assert [p.visible for p in placed] == ["0,1", "2,3"]  # the frontend starts only 2
    assert (
        "TorchServe runs only 2 worker(s); set minWorkers and maxWorkers to 2"
        in (placed[0].warnings[0])
    )


def test_five_single_gpu_workers_on_four_gpus_are_refused_with_the_fix():
    cfg = config(workers=5)
    vs = views(cfg, count=4)
    assert [v.gpu_id for v in vs] == [1, 2, 3, 0, 1]  # the fifth would share GPU 1
    with pytest.raises(ConfigError) as err:
        place(cfg, vs[0])
    msg = str(err.value)
    assert "minWorkers: 5 worker(s) × 1 GPU(s) per worker" in msg
    assert "= 5 GPUs, but 4 are available" in msg
    assert "lower minWorkers and maxWorkers to 4" in msg


def test_more_gpus_per_worker_than_visible():
    cfg = config(tp=8, custom=True)
    with pytest.raises(ConfigError, match="use at most 4 GPU"):
        place(cfg, GpuView(0, "0,1,2,3,4,5,6,7", None, True, (0, 1, 2, 3)))


def test_tp_without_custom_single_worker_takes_the_first_n():
    cfg = config(tp=2)  # TorchServe's own examples: tensor_parallel_size with no parallelType
    placed = place(cfg, GpuView(1, "4,5,6,7", "4,5,6,7", True, tuple(range(8))))
    assert placed.visible == "4,5"


def test_tp_without_custom_several_workers_refused():
    # the config already refuses it (ModelConfig._gpu_problems); place() refuses it too
    with pytest.raises(ConfigError, match="set parallelType: custom and parallelLevel: 2"):
        config(tp=2, workers=2)
    cfg = config(tp=2).model_copy(update={"minWorkers": 2, "maxWorkers": 2})
    with pytest.raises(ConfigError, match="set parallelType: custom and parallelLevel: 2"):
        place(cfg, GpuView(1, None, None, True, (0, 1, 2, 3)))


def test_max_workers_beyond_the_gpus_is_a_warning_only():
    cfg = config(workers=2, max_workers=8)
    placed = place(cfg, GpuView(1, None, None, True, (0, 1, 2, 3)))
    assert placed.visible == "1"
    assert any("scaling beyond 4" in w for w in placed.warnings)


def test_device_ids_single_gpu_workers():
    cfg = config(workers=2, device_ids=[2, 3])
    placed = [place(cfg, v) for v in views(cfg, count=4)]
    assert [p.visible for p in placed] == ["2", "3"]
    cfg = config(workers=3, device_ids=[2, 3])
    with pytest.raises(ConfigError, match="but 2 in deviceIds are available"):
        place(cfg, views(cfg, count=4)[0])


def test_device_ids_custom_under_frontend_visible():
    cfg = config(tp=2, custom=True, device_ids=[2, 3])
    (view,) = views(cfg, count=8, frontend_visible="4,5,6,7")
    assert view.worker_visible == "2,3"
    assert place(cfg, view).visible == "6,7"


def test_device_ids_torchserve_does_not_see():
    cfg = config(device_ids=[5])
    with pytest.raises(ConfigError, match="deviceIds: 5 not among the 4 GPU"):
        place(cfg, GpuView(5, None, None, True, (0, 1, 2, 3)))


def test_a_worker_given_gpus_past_the_last_is_refused():
    # 3 GPUs, 1 worker of 2 (fits), but after scaling TorchServe's counter is at 2: "2,3"
    cfg = config(tp=2, custom=True)
    with pytest.raises(ConfigError, match="run past the last GPU"):
        place(cfg, GpuView(2, "2,3", None, True, (0, 1, 2)))


def test_no_gpu_found_by_torchserve():
    with pytest.raises(ConfigError, match="TorchServe found no GPU"):
        place(config(), GpuView(None, None, None, True, None))


def test_cuda_visible_devices_in_handler_env_is_refused():
    cfg = config(env={"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(ConfigError, match=r"handler.env.CUDA_VISIBLE_DEVICES: do not set it"):
        place(cfg, GpuView(1, None, None, True, (0, 1)))


def test_parallel_level_mismatch_is_refused():
    cfg = config(tp=2, custom=True).model_copy(update={"parallelLevel": 4})
    with pytest.raises(ConfigError, match="parallelLevel 4 does not match"):
        place(cfg, GpuView(0, "0,1,2,3", None, True, (0, 1, 2, 3)))


def test_a_multinode_leader_takes_its_share_per_node():
    # TP 8 over 2 nodes: this (leader) node runs 4 of the 8 ranks, on its own 4 GPUs
    cfg = config(tp=8, nnodes=2, custom=True)
    assert cfg.parallelLevel == 4
    (view,) = views(cfg, count=4)
    placed = place(cfg, view)
    assert placed.devices == ("0", "1", "2", "3") and placed.warnings == ()


def test_a_multinode_leader_under_a_restricted_frontend_gets_physical_ids():
    cfg = config(tp=8, nnodes=2, custom=True, workers=2)
    placed = [
        place(cfg, view).visible
        for view in views(cfg, count=8, frontend_visible="8,9,10,11,12,13,14,15", smi=range(16))
    ]
    assert placed == ["8,9,10,11", "12,13,14,15"]


def test_a_multinode_parallel_level_of_all_nodes_is_refused_per_node():
    # the config refuses it already (ModelConfig._gpu_problems); place() refuses it too
    with pytest.raises(ConfigError, match="set parallelLevel: 4"):
        validate_model_config(
            {
                **config(tp=8, nnodes=2, custom=True).model_dump(exclude_unset=True),
                "parallelLevel": 8,
            }
        )
    cfg = config(tp=8, nnodes=2, custom=True).model_copy(update={"parallelLevel": 8})
    with pytest.raises(ConfigError) as err:
        place(cfg, GpuView(0, "0,1,2,3,4,5,6,7", None, True, tuple(range(8))))
    message = str(err.value)
    assert "parallelLevel 8 does not match" in message
    assert "/ nnodes 2 (4 GPU(s) per node)" in message and "set parallelLevel: 4" in message


def test_a_multinode_leader_without_parallel_type_takes_the_first_per_node():
    cfg = config(tp=4, nnodes=2)  # one worker: the first 2 GPUs of this node
    assert place(cfg, GpuView(1, None, None, True, (0, 1, 2, 3))).visible == "0,1"
    with pytest.raises(ConfigError) as err:  # this node has 1 GPU, the engine needs 2 here
        place(cfg, GpuView(0, None, None, True, (0,)))
    message = str(err.value)
    assert "2 GPU(s) per worker per node" in message and "/ nnodes 2" in message
    assert "use at most 1 GPU(s) per worker per node" in message


def test_number_of_gpu_caps_the_pool():
    cfg = config(workers=3)
    with pytest.raises(ConfigError, match="= 3 GPUs, but 2 are available"):
        place(cfg, GpuView(1, None, None, True, (0, 1, 2, 3), number_of_gpu=2))


def test_unknown_frontend_environment():
    # custom: the frontend's value is written over; without /proc assume it saw every GPU
    cfg = config(tp=2, custom=True)
    placed = place(cfg, GpuView(0, "0,1", None, False, (0, 1, 2, 3)))
    assert placed.visible == "0,1"
    assert any("unknown" in w for w in placed.warnings)
    # no parallelType: the worker inherited the frontend's value
    placed = place(config(), GpuView(2, "4,5,6,7", None, False, tuple(range(8))))
    assert placed.visible == "6"


def test_no_nvidia_smi_in_the_worker():
    placed = place(config(), GpuView(1, None, None, True, None))
    assert placed.visible == "1" and placed.gpu_count is None
    placed = place(config(), GpuView(1, "4,5,6,7", "4,5,6,7", True, None))
    assert placed.visible == "5" and placed.gpu_count == 4


@pytest.mark.parametrize("workers, tp", list(itertools.product([1, 2, 3, 4, 5], [1, 2, 4])))
def test_refusal_depends_only_on_the_config_and_the_gpu_count(workers, tp):
    cfg = config(tp=tp, workers=workers, custom=tp > 1)
    outcomes = set()
    for view in views(cfg, count=4):
        try:
            place(cfg, view)
            outcomes.add("ok")
        except ConfigError:
            outcomes.add("refused")
    # custom: the frontend caps the workers, so only single-GPU workers can overlap
    assert outcomes == {"ok" if tp > 1 or workers <= 4 else "refused"}


# -- gathering the view ------------------------------------------------------------------------


def fake_proc(tmp_path: Path, *, cmdline: list[str], environ: dict[str, str]) -> Path:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    (proc / "42" / "environ").write_bytes(
        b"\0".join(f"{k}={v}".encode() for k, v in environ.items()) + b"\0"
    )
    return proc


def test_frontend_environment_and_number_of_gpu_from_proc(tmp_path):
    props = tmp_path / "config.properties"
    props.write_text("inference_address=http://127.0.0.1:8080\nnumber_of_gpu = 3\n")
    proc = fake_proc(
        tmp_path,
        cmdline=["java", "-cp", "x", "org.pytorch.serve.ModelServer", "-f", str(props)],
        environ={"CUDA_VISIBLE_DEVICES": "4,5,6,7", "PATH": "/bin"},
    )
    frontend = pl.frontend_process(42, proc)
    assert frontend == proc / "42"
    assert pl.frontend_environ(frontend)["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert pl.frontend_number_of_gpu(frontend) == 3


def test_a_parent_that_is_not_the_frontend_is_not_trusted(tmp_path):
    proc = fake_proc(tmp_path, cmdline=["bash"], environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert pl.frontend_process(42, proc) is None
    assert pl.frontend_process(43, proc) is None


def test_smi_indices_parses_torchserve_query(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'index, name'\necho '0, Fake'\necho '1, Fake'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert pl.smi_indices() == (0, 1)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert pl.smi_indices() is None


def test_worker_name_from_torchserve_argv():
    assert pl.worker_name(["x", "--sock-type", "unix", "--sock-name", "/tmp/.ts.sock.9001"]) == (
        "W-9001"
    )
    assert pl.worker_name(["x"]).startswith("pid ")


def test_assign_gpus_sets_the_environment_and_logs(monkeypatch, caplog):
    monkeypatch.setattr(
        pl, "observe", lambda props, env: GpuView(2, "4,5,6,7", "4,5,6,7", True, tuple(range(8)))
    )
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    with caplog.at_level(logging.INFO, logger=pl.__name__):
        assert pl.assign_gpus(config(workers=4), {"gpu_id": 2}, env) is None
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    assert "GPUs 6" in caplog.text


def test_assign_gpus_returns_the_refusal_and_leaves_the_environment(monkeypatch):
    monkeypatch.setattr(pl, "observe", lambda props, env: GpuView(1, "0,1", None, True, (0, 1)))
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    err = pl.assign_gpus(config(workers=3), {"gpu_id": 1}, env)
    assert isinstance(err, ConfigError) and "lower minWorkers and maxWorkers to 2" in str(err)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_assign_gpus_does_nothing_on_cpu():
    env: dict[str, str] = {}
    cfg = validate_model_config(
        {"asyncCommunication": True, "handler": {"model_path": "org/model"}}
    )
    assert pl.assign_gpus(cfg, {"gpu_id": None}, env) is None
    assert env == {}
