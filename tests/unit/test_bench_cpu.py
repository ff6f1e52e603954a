"""``tsvllm bench serve``'s CPU per request, with faked process trees: each side's serving
processes (vLLM's API server; TorchServe's frontend and our worker) are told from vLLM's
engine processes, CPU is the difference of user + system times before and after a load,
a process started during a load counts from zero, one that vanished is left out, a reused
pid is a new process; the per-request numbers reach the report, its ratios and the table;
embeddings loads are not streamed and probe with an embedding."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from tsvllm.bench import serve, usage

CONFIG = Path(__file__).parents[2] / "model_configs" / "tiny-cpu.yaml"
Times = namedtuple("Times", "user system children_user children_system")


class FakeProc:
    """A psutil.Process look-alike whose CPU time the test sets."""

    def __init__(self, pid: int, name: str, *, user=0.0, system=0.0, argv=None, created=1.0):
        self.pid, self._name, self._created = pid, name, created
        self.user, self.system = user, system
        self._argv = argv if argv is not None else [name]
        self.gone = False

    def name(self) -> str:
        return self._name

    def cmdline(self) -> list[str]:
        return self._argv

    def create_time(self) -> float:
        return self._created

    def cpu_times(self) -> Times:
        if self.gone:
            raise psutil.NoSuchProcess(self.pid)
        # children's times are large on purpose: they must not be added
        return Times(self.user, self.system, 1000.0, 1000.0)


def test_roles_of_each_sides_processes():
    role = usage.process_role
    assert role(FakeProc(1, "python", argv=["python", "-m", "vllm.entrypoints..."])) == "server"
    assert role(FakeProc(2, "VLLM::EngineCor", argv=["VLLM::EngineCore"])) == "engine"
    assert role(FakeProc(3, "python3", argv=["VLLM::Worker"])) == "engine"  # comm not retitled
    assert role(FakeProc(4, "java", argv=["java", "-Dmodel_server_home=..."])) == "frontend"
    assert role(FakeProc(5, "torchserve", argv=["python", "torchserve", "--start"])) == "server"


def test_cpu_used_is_the_difference_per_role():
    api = FakeProc(10, "python", user=5.0, system=1.0)
    core = FakeProc(11, "VLLM::EngineCore", user=50.0, system=2.0)
    worker = FakeProc(12, "VLLM::Worker", user=80.0, system=3.0)
    before = usage.cpu_snapshot([api, core, worker])
    api.user, api.system = 5.6, 1.2  # +0.8 s
    core.user += 3.0
    worker.system += 1.5
    used = usage.cpu_used(before, usage.cpu_snapshot([api, core, worker]))
    assert used == pytest.approx({"server": 0.8, "frontend": 0.0, "engine": 4.5})


def test_new_vanished_and_reused_processes():
    java = FakeProc(20, "java", user=10.0)
    worker = FakeProc(21, "python", user=4.0)
    helper = FakeProc(22, "python", user=1.0)
    before = usage.cpu_snapshot([java, worker, helper])
    java.user = 10.5
    helper.gone = True  # exits during the load: left out, no negative CPU
    reused = FakeProc(21, "python", user=0.25, created=99.0)  # same pid, new process
    new = FakeProc(23, "VLLM::Worker", user=0.75)
    used = usage.cpu_used(before, usage.cpu_snapshot([java, reused, helper, new]))
    assert used == pytest.approx({"server": 0.25, "frontend": 0.5, "engine": 0.75})


def test_ms_per_request_and_chunk_serving_is_frontend_plus_server_and_roles_add_up():
    used = {"server": 0.2, "frontend": 0.12, "engine": 1.6}
    per = usage.cpu_ms_per_request(used, 64, chunks=640)
    assert per == pytest.approx(
        {
            "cpu_ms_per_req_server": 3.125,
            "cpu_ms_per_req_frontend": 1.875,
            "cpu_ms_per_req_engine": 25.0,
            "cpu_ms_per_req_serving": 5.0,
            "cpu_ms_per_req_total": 30.0,
            "cpu_ms_per_chunk_serving": 0.5,
        }
    )
    roles = sum(per[f"cpu_ms_per_req_{role}"] for role in usage.ROLES)
    assert roles == pytest.approx(per["cpu_ms_per_req_total"])
    assert "cpu_ms_per_chunk_serving" not in usage.cpu_ms_per_request(used, 64)  # not streamed
    assert usage.cpu_ms_per_request({"server": 1.0, "frontend": 0, "engine": 0}, 0) == {}


def test_cpu_meter_lists_the_tree_before_and_after(monkeypatch):
    procs = [FakeProc(30, "python", user=1.0), FakeProc(31, "VLLM::EngineCore", user=2.0)]
    calls = []
    monkeypatch.setattr(usage, "process_tree", lambda pid: calls.append(pid) or list(procs))
    with usage.CpuMeter(30) as meter:
        procs[0].user += 0.5
        procs.append(FakeProc(32, "VLLM::Worker", system=0.25))
    assert calls == [30, 30]
    assert meter.used == pytest.approx({"server": 0.5, "frontend": 0.0, "engine": 0.25})


def test_process_tree_of_this_process_and_of_a_gone_one():
    assert usage.process_tree(os.getpid())[0].pid == os.getpid()
    assert usage.process_tree(2**22 + 12345) == []


class Trees:
    """Fake process trees per side: each load adds a known CPU time per role."""

    #: CPU seconds one load costs each role, per side (a: vLLM server; b: TorchServe)
    COST = {
        "a": {"server": 0.64, "engine": 1.28},
        "b": {"server": 0.32, "frontend": 0.64, "engine": 1.28},
    }

    def __init__(self, monkeypatch):
        self.procs = {
            "a": [FakeProc(100, "python"), FakeProc(101, "VLLM::EngineCore")],
            "b": [FakeProc(200, "java"), FakeProc(201, "python"), FakeProc(202, "VLLM::Worker")],
        }
        self.pids = {100: "a", 200: "b"}
        self.loads: list[tuple[str, str, bool]] = []
        self.probes: list[str] = []
        monkeypatch.setattr(serve, "_start_vllm", lambda argv, **kw: self.side("a", 100))
        monkeypatch.setattr(serve, "_start_torchserve", lambda n, cfg, **kw: self.side(n, 200))
        monkeypatch.setattr(serve, "first_token_s", self.first_token_s)
        monkeypatch.setattr(usage, "process_tree", lambda pid: self.procs[self.pids[pid]])
        monkeypatch.setattr(usage, "PeakRss", FakeRss)
        monkeypatch.setattr(serve, "load", self.load)

    def side(self, name: str, pid: int) -> serve._Side:
        return serve._Side(name, f"http://{name}", type("P", (), {"pid": pid})(), lambda: None)

    def first_token_s(self, *a, api: str, **kw) -> float:
        self.probes.append(api)
        return 1.0

    def load(self, url: str, model: str, *, stream: bool, requests: int, api: str, **kw):
        name = url.removeprefix("http://")
        self.loads.append((name, api, stream))
        roles = {"VLLM::EngineCore": "engine", "VLLM::Worker": "engine", "java": "frontend"}
        for proc in self.procs[name]:
            proc.user += self.COST[name].get(roles.get(proc.name(), "server"), 0.0)
        return {
            "requests": requests,
            "errors": 0,
            "tok_per_s": 100.0,
            "req_per_s": 1.0,
            "latency_p50_ms": 1.0,
            "latency_p99_ms": 1.0,
        }


class FakeRss:
    def __init__(self, pid: int):
        self.peak = 1.0

    def __enter__(self) -> FakeRss:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_the_report_has_cpu_per_request_per_side_mode_and_api(monkeypatch, tmp_path):
    trees = Trees(monkeypatch)
    report = serve.run(
        model_dir=tmp_path,
        config=CONFIG,
        workdir=tmp_path / "w",
        shapes=["64x16x32", "chat:64x16x32", "embeddings:64x16x8"],
        sides=["a", "b"],
        rounds=1,
        warmup=0,
        progress=lambda _: None,
    )
    assert trees.probes == ["completions", "completions"]  # a generating load: completions
    # embeddings are not streamed; completions and chat are, after their non-streaming load
    apis = [(api, stream) for name, api, stream in trees.loads if name == "a"]
    assert apis == [
        ("completions", False),
        ("completions", True),
        ("chat", False),
        ("chat", True),
        ("embeddings", False),
    ]
    a = report["sides"]["a"]["shapes"]
    b = report["sides"]["b"]["shapes"]
    assert set(a["embeddings:64x16x8"]) == {"non_stream"}
    for shape in ("64x16x32", "chat:64x16x32"):
        for mode in ("non_stream", "stream"):
            assert a[shape][mode]["cpu_ms_per_req_serving"] == pytest.approx(10.0)
            assert a[shape][mode]["cpu_ms_per_req_engine"] == pytest.approx(20.0)
            assert b[shape][mode]["cpu_ms_per_req_server"] == pytest.approx(5.0)
            assert b[shape][mode]["cpu_ms_per_req_frontend"] == pytest.approx(10.0)
            assert b[shape][mode]["cpu_ms_per_req_serving"] == pytest.approx(15.0)
            assert b[shape][mode]["cpu_ms_per_req_engine"] == pytest.approx(20.0)
    ratios = report["ratios"]["b/a"]
    assert ratios["chat:64x16x32"]["stream_cpu_ms_per_req_serving"] == pytest.approx(1.5)
    assert ratios["embeddings:64x16x8"] == {
        "non_stream_tok_per_s": 1.0,
        "non_stream_req_per_s": 1.0,
        "non_stream_latency_p50_ms": 1.0,
        "non_stream_latency_p99_ms": 1.0,
        "non_stream_cpu_ms_per_req_server": 0.5,
        "non_stream_cpu_ms_per_req_engine": 1.0,
        "non_stream_cpu_ms_per_req_serving": 1.5,
        "non_stream_cpu_ms_per_req_total": pytest.approx(35 / 30, abs=1e-3),
    }  # no frontend ratio: a has none to divide by
    table = serve.render(report).splitlines()
    assert "srv ms/req" in table[0] and "eng ms/req" in table[0]
    row = next(line for line in table if line.startswith("b    embeddings:64x16x8"))
    assert row.split()[-3:] == ["15.00", "20.00", "-"]  # no chunks: not streamed


def test_an_embeddings_only_bench_probes_with_an_embedding(monkeypatch, tmp_path):
    trees = Trees(monkeypatch)
    serve.run(
        model_dir=tmp_path,
        config=CONFIG,
        workdir=tmp_path / "w",
        shapes=["embeddings:32x8x4"],
        sides=["a", "b"],
        rounds=1,
        warmup=0,
        progress=lambda _: None,
    )
    assert trees.probes == ["embeddings", "embeddings"]
    assert {(api, stream) for _, api, stream in trees.loads} == {("embeddings", False)}


def test_load_shapes_name_their_api():
    assert serve.parse_load("64x16x32") == ("completions", (64, 16, 32))
    assert serve.parse_load("chat:8x2x4") == ("chat", (8, 2, 4))
    assert serve.parse_load("embeddings:256x16x8") == ("embeddings", (256, 16, 8))
    with pytest.raises(ValueError, match="unknown API 'rerank'"):
        serve.parse_load("rerank:8x2x4")


def test_request_bodies_per_api():
    from tsvllm.bench.load import body_for

    chat = body_for("chat", "m", 1, max_tokens=8)
    assert chat["messages"][0]["content"] and chat["max_tokens"] == 8 and chat["ignore_eos"]
    assert body_for("completions", "m", 1, max_tokens=8)["prompt"] == chat["messages"][0]["content"]
    embed = body_for("embeddings", "m", 3, max_tokens=4)
    assert set(embed) == {"model", "input"} and len(embed["input"]) == 4
    assert len(set(embed["input"])) == 4  # distinct texts
    assert embed == body_for("embeddings", "m", 3, max_tokens=4)  # the same for every side
