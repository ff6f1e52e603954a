"""The host side of a drain (tsvllm.host.shutdown, serve_foreground) with fake workers.

A fake worker is a thread that speaks the file protocol of tsvllm.drain: it watches the
control dir, finishes a request every ``finish_every`` seconds once draining, ends all on
``abort``, and writes ``worker-<pid>.json`` every POLL_S. A fake TorchServe stands in for
the server; the signals are real (sent to this process).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tsvllm import drain as protocol
from tsvllm.host import launcher, shutdown


class FakeWorker(threading.Thread):
    def __init__(
        self,
        directory: Path,
        *,
        pid: int,
        running: int,
        finish_every: float | None = None,
        model: str = "m",
        always_report: bool = False,
    ):
        super().__init__(daemon=True)
        self.directory, self.pid, self.model = directory, pid, model
        self.running = running
        self.finish_every = finish_every
        self.always_report = always_report
        self.aborted = False
        self.hears_abort = True
        self.done = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.done.is_set():
            draining, abort = protocol.requested(self.directory, model=self.model)
            now = time.monotonic()
            if abort and self.hears_abort and self.running:
                self.running, self.aborted = 0, True
            elif draining and self.finish_every is not None and self.running:
                if now - last >= self.finish_every:
                    self.running, last = self.running - 1, now
            else:
                last = now
            if draining or self.always_report:
                protocol.write_status(self.directory, pid=self.pid, running=self.running)
            time.sleep(protocol.POLL_S / 2)


@pytest.fixture
def workers(tmp_path):
    started: list[FakeWorker] = []

    def start(**kw) -> FakeWorker:
        started.append(FakeWorker(tmp_path, **kw))
        started[-1].start()
        return started[-1]

    yield start
    for w in started:
        w.done.set()
        w.join(timeout=5)


def run_drain(directory: Path, pids: list[int], **kw):
    said: list[str] = []
    kw.setdefault("interrupted", lambda: False)
    kw.setdefault("alive", lambda: True)
    started = time.monotonic()
    result = shutdown.drain(directory, workers=lambda: pids, say=said.append, **kw)
    return result, said, time.monotonic() - started


# -- the drain loop ---------------------------------------------------------------------


def test_clean_drain_waits_for_every_worker_then_exits_0(tmp_path, workers):
    workers(pid=101, running=3, finish_every=0.2)
    workers(pid=102, running=1, finish_every=0.4)
    result, said, took = run_drain(tmp_path, [101, 102], timeout_s=10)
    assert result.clean and result.exit_code == shutdown.EXIT_CLEAN == 0
    assert 0.5 < took < 3, took  # three finishes of 0.2 s, not the 10 s timeout
    assert any(line.startswith("draining: 4 requests running") for line in said), said
    assert said[-1].startswith("drain done in "), said
    assert (tmp_path / protocol.DRAIN).exists() and not (tmp_path / protocol.ABORT).exists()


def test_nothing_running_drains_in_the_settle_time(tmp_path, workers):
    workers(pid=101, running=0, always_report=True)
    result, _, took = run_drain(tmp_path, [101], timeout_s=10)
    assert result.clean
    assert shutdown.SETTLE_S <= took < 1.5


def test_timeout_aborts_and_exits_3(tmp_path, workers):
    stuck = workers(pid=101, running=5)  # never finishes by itself
    result, said, took = run_drain(tmp_path, [101], timeout_s=0.6)
    assert not result.clean and result.ended == 5
    assert result.exit_code == shutdown.EXIT_REQUESTS_ENDED == 3
    assert stuck.aborted and (tmp_path / protocol.ABORT).exists()
    assert "drain timeout: ending 5 requests" in said, said
    assert said[-1].startswith("ended them in "), said
    assert 0.6 <= took < 2.5, took


def test_abort_wait_is_bounded_when_a_worker_never_reaches_0(tmp_path, workers):
    workers(pid=101, running=2).hears_abort = False  # a hung request
    result, said, took = run_drain(tmp_path, [101], timeout_s=0.3, abort_wait_s=0.5)
    assert result.exit_code == 3
    assert said[-1] == "2 requests still running after 0.5 s: stopping anyway", said
    assert took < 2.5


def test_second_signal_stops_the_wait_at_once_without_abort(tmp_path, workers):
    workers(pid=101, running=2)
    signals = [signal.SIGTERM]
    threading.Timer(0.4, lambda: signals.append(signal.SIGTERM)).start()
    result, said, took = run_drain(
        tmp_path, [101], timeout_s=30, interrupted=lambda: len(signals) > 1
    )
    assert took < 1.5, took
    assert result.exit_code == 3 and result.ended == 2
    assert said[-1] == "second signal: stopping at once, ending 2 requests", said
    assert not (tmp_path / protocol.ABORT).exists()


def test_drain_timeout_0_ends_requests_at_once(tmp_path, workers):
    w = workers(pid=101, running=4, finish_every=5)
    result, said, took = run_drain(tmp_path, [101], timeout_s=0)
    assert took < 1.5, took
    assert w.aborted and result.exit_code == 3
    assert "drain timeout: ending 4 requests" in said


def test_torchserve_exiting_during_the_drain_is_a_failure(tmp_path, workers):
    workers(pid=101, running=1)
    result, said, _ = run_drain(tmp_path, [101], timeout_s=30, alive=lambda: False)
    assert result.failed and result.exit_code == shutdown.EXIT_FAILED == 1
    assert said[-1] == "TorchServe exited during the drain"


def test_a_worker_that_never_reports_is_not_waited_for(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(shutdown, "SILENT_S", 0.4)
    workers(pid=101, running=0, always_report=True)
    result, said, took = run_drain(tmp_path, [101, 999], timeout_s=30)
    assert result.clean and took < 2
    assert any("worker 999 reports no status" in line for line in said), said


# -- the drain timeout ----------------------------------------------------------------


def test_drain_timeout_from_flag_env_or_default():
    assert shutdown.drain_timeout({}) == 30
    assert shutdown.drain_timeout({"TSVLLM_DRAIN_TIMEOUT_S": " 12.5 "}) == 12.5
    assert shutdown.drain_timeout({"TSVLLM_DRAIN_TIMEOUT_S": "12"}, flag="0") == 0


@pytest.mark.parametrize("raw", ["-1", "abc", "nan", "inf", "1e999"])
def test_bad_drain_timeouts_name_the_variable(raw):
    with pytest.raises(ValueError, match=r"TSVLLM_DRAIN_TIMEOUT_S=.*a number >= 0"):
        shutdown.drain_timeout({"TSVLLM_DRAIN_TIMEOUT_S": raw})
    with pytest.raises(ValueError, match=r"--drain-timeout="):
        shutdown.drain_timeout({}, flag=raw)


def test_shutdown_bound_covers_drain_abort_and_stop():
    bound = shutdown.shutdown_bound(30)
    assert bound == 30 + shutdown.ABORT_WAIT_S + shutdown.STOP_S


def test_launcher_rejects_a_bad_drain_timeout_before_starting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TSVLLM_DRAIN_TIMEOUT_S", "soon")
    code = launcher.main(["--model_id", str(tmp_path), "--model_store", str(tmp_path / "s")])
    assert code == 2
    assert "TSVLLM_DRAIN_TIMEOUT_S='soon'" in capsys.readouterr().err


def test_entrypoint_rejects_a_bad_drain_timeout(tmp_path, capsys):
    from tsvllm.host import entrypoint

    code = entrypoint.main([], env={"TSVLLM_DRAIN_TIMEOUT_S": "-3", "MODEL_PATH": str(tmp_path)})
    assert code == 2
    assert "TSVLLM_DRAIN_TIMEOUT_S='-3'" in capsys.readouterr().err


# -- serve_foreground with a fake TorchServe ----------------------------------------------


class FakeProcess:
    def __init__(self):
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeTorchServe:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.control_dir = workdir  # where the fake workers look
        self.process: FakeProcess | None = None
        self.stopped_at: float | None = None

    def start(self) -> None:
        self.process = FakeProcess()

    def wait_ready(self, model, *, timeout, on_wait=None) -> None:
        pass

    def stop(self) -> None:
        self.stopped_at = time.monotonic()
        self.process = None


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _signal_later(*delays: float, signum: int = signal.SIGTERM) -> None:
    for delay in delays:
        threading.Timer(delay, os.kill, (os.getpid(), signum)).start()


def serve(ts: FakeTorchServe, *, drain_timeout_s: float, signals_at: tuple[float, ...]):
    marks: dict[str, float] = {}

    def on_ready() -> None:
        marks["ready"] = time.monotonic()
        _signal_later(*signals_at)

    code = launcher.serve_foreground(
        ts,
        model="m",
        startup_timeout=10,
        on_ready=on_ready,
        prog="test",
        drain_timeout_s=drain_timeout_s,
    )
    return code, ts.stopped_at - marks["ready"]


def test_sigterm_drains_then_stops_and_exits_0(tmp_path, workers, monkeypatch, restore_signals):
    ts = FakeTorchServe(tmp_path)
    workers(pid=201, running=2, finish_every=0.3)
    monkeypatch.setattr(shutdown, "worker_pids", lambda _ts: [201])
    code, stopped_after = serve(ts, drain_timeout_s=20, signals_at=(0.2,))
    assert code == 0
    assert 0.7 < stopped_after < 3, stopped_after  # two finishes of 0.3 s, then stop
    assert (ts.control_dir / protocol.DRAIN).exists()


def test_sigterm_with_a_stuck_request_aborts_and_exits_3(
    tmp_path, workers, monkeypatch, restore_signals, capsys
):
    ts = FakeTorchServe(tmp_path)
    stuck = workers(pid=201, running=1)
    monkeypatch.setattr(shutdown, "worker_pids", lambda _ts: [201])
    code, stopped_after = serve(ts, drain_timeout_s=0.5, signals_at=(0.1,))
    assert code == 3 and stuck.aborted
    assert stopped_after < 3
    out = capsys.readouterr().out
    assert "test: drain timeout: ending 1 request\n" in out and "test: stopped in" in out


def test_a_second_signal_stops_at_once(tmp_path, workers, monkeypatch, restore_signals):
    ts = FakeTorchServe(tmp_path)
    workers(pid=201, running=3)
    monkeypatch.setattr(shutdown, "worker_pids", lambda _ts: [201])
    code, stopped_after = serve(ts, drain_timeout_s=30, signals_at=(0.1, 0.5))
    assert code == 3
    assert stopped_after < 1.5, stopped_after
    assert not (ts.control_dir / protocol.ABORT).exists()


def test_sigint_then_sigint_stops_at_once_too(tmp_path, workers, monkeypatch, restore_signals):
    ts = FakeTorchServe(tmp_path)
    workers(pid=201, running=3)
    monkeypatch.setattr(shutdown, "worker_pids", lambda _ts: [201])
    marks: dict[str, float] = {}

    def on_ready() -> None:
        marks["ready"] = time.monotonic()
        _signal_later(0.1, 0.4, signum=signal.SIGINT)

    code = launcher.serve_foreground(
        ts, model="m", startup_timeout=10, on_ready=on_ready, prog="t", drain_timeout_s=30
    )
    assert code == 3 and ts.stopped_at - marks["ready"] < 1.5


def test_torchserve_exiting_on_its_own_is_still_exit_1(tmp_path, restore_signals):
    ts = FakeTorchServe(tmp_path)

    def on_ready() -> None:
        threading.Timer(0.2, lambda: setattr(ts.process, "returncode", 1)).start()

    code = launcher.serve_foreground(
        ts, model="m", startup_timeout=10, on_ready=on_ready, prog="t", drain_timeout_s=30
    )
    assert code == 1 and ts.stopped_at is not None


# -- tsvllm drain (one model of a running server) -----------------------------------------


def test_drain_model_waits_for_that_models_workers(tmp_path, workers):
    # a live PID is needed: this process stands in for the worker
    workers(pid=os.getpid(), running=2, finish_every=0.2, model="a")
    said: list[str] = []
    code = shutdown.drain_model(tmp_path, model="a", timeout_s=10, say=said.append)
    assert code == 0, said
    assert (tmp_path / "drain@a").exists() and not (tmp_path / protocol.DRAIN).exists()
    assert said[-1].startswith("drained in ") and "model 'a'" in said[-1]


def test_drain_model_timeout_is_exit_3_and_no_abort(tmp_path, workers):
    workers(pid=os.getpid(), running=2, model="a")
    said: list[str] = []
    code = shutdown.drain_model(tmp_path, model="a", timeout_s=0.5, say=said.append)
    assert code == 3 and said[-1] == "2 requests still running after 0.5 s"
    assert not (tmp_path / "abort@a").exists()


def test_drain_model_with_no_worker_reporting_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(shutdown, "SILENT_S", 0.3)
    said: list[str] = []
    code = shutdown.drain_model(tmp_path, model="nope", timeout_s=5, say=said.append)
    assert code == 1 and "no worker reported" in said[-1] and "'nope'" in said[-1]


def test_drain_model_needs_an_existing_control_dir(tmp_path):
    with pytest.raises(ValueError, match="no such control directory"):
        shutdown.drain_model(tmp_path / "missing", model=None, timeout_s=1, say=print)


def test_cli_drain_prints_what_to_do_next(tmp_path, workers, capsys):
    from tsvllm.cli import main as cli

    workers(pid=os.getpid(), running=1, finish_every=0.2, model="a")
    assert cli(["drain", "--control-dir", str(tmp_path), "--model", "a", "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    assert "tsvllm drain: drained in" in out
    assert "curl -X DELETE http://127.0.0.1:8081/models/a" in out
    assert f"--control-dir {tmp_path} --model a --cancel" in out


def test_cli_drain_cancel_lets_the_workers_take_requests_again(tmp_path, capsys):
    from tsvllm.cli import main as cli

    protocol.request(tmp_path, protocol.DRAIN, model="a")
    assert cli(["drain", "--control-dir", str(tmp_path), "--model", "a", "--cancel"]) == 0
    assert not (tmp_path / "drain@a").exists()
    assert "takes requests again" in capsys.readouterr().out


def test_cli_drain_rejects_a_bad_timeout_and_a_missing_dir(tmp_path, capsys):
    from tsvllm.cli import main as cli

    assert cli(["drain", "--control-dir", str(tmp_path), "--timeout", "x"]) == 2
    assert "--timeout='x'" in capsys.readouterr().err
    assert cli(["drain", "--control-dir", str(tmp_path / "no")]) == 2
    assert "no such control directory" in capsys.readouterr().err


def test_the_drain_timeout_comes_from_the_flag_then_the_env_then_the_config():
    env = {shutdown.DRAIN_TIMEOUT_ENV: "12"}
    assert shutdown.drain_timeout(env, flag="3", configured=40) == 3
    assert shutdown.drain_timeout(env, configured=40) == 12
    assert shutdown.drain_timeout({}, configured=40) == 40
    assert shutdown.drain_timeout({}) == shutdown.DEFAULT_DRAIN_TIMEOUT_S
