"""``tsvllm bench serve --plot``: what the plot needs is checked before the run starts, so a
missing matplotlib (or folder) is a clear message at once, never a crash after a long run."""

from __future__ import annotations

import sys
import types

import pytest

from tsvllm import cli
from tsvllm.bench import serve


@pytest.fixture
def runs(monkeypatch) -> list[dict]:
    """The bench runs started (none may be, when the plot cannot be written)."""
    started: list[dict] = []

    def run(**kwargs):
        started.append(kwargs)
        raise AssertionError("the run started")

    monkeypatch.setattr(serve, "run", run)
    return started


def bench(tmp_path, plot: str) -> list[str]:
    return ["bench", "serve", "--model-dir", str(tmp_path), "--plot", plot]


def test_without_matplotlib_plot_fails_before_the_run_naming_the_install(
    tmp_path, monkeypatch, capsys, runs
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert cli.main(bench(tmp_path, str(tmp_path / "bench.png"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("tsvllm bench: --plot needs matplotlib")
    assert "pip install -e '.[plot]'" in err and "leave --plot out" in err
    assert runs == [] and not (tmp_path / "bench.png").exists()


def fake_matplotlib(monkeypatch) -> list[str]:
    """An importable matplotlib; returns the backends it was asked to use."""
    used: list[str] = []
    mpl = types.ModuleType("matplotlib")
    mpl.use = used.append
    pyplot = types.ModuleType("matplotlib.pyplot")
    mpl.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    return used


def test_a_plot_into_a_missing_folder_fails_before_the_run(tmp_path, monkeypatch, capsys, runs):
    fake_matplotlib(monkeypatch)
    missing = tmp_path / "no-such-folder" / "bench.png"
    assert cli.main(bench(tmp_path, str(missing))) == 2
    err = capsys.readouterr().err
    assert f"the folder {missing.parent} does not exist" in err
    assert runs == []


def test_with_matplotlib_the_run_goes_on_and_draws_to_files_only(tmp_path, monkeypatch):
    used = fake_matplotlib(monkeypatch)
    serve.check_plot(tmp_path / "bench.png")  # no error
    assert used == ["Agg"]  # no display needed
