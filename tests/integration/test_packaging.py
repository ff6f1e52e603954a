"""The handler entry files ship inside the package: ``tsvllm archive`` needs no --handler
after a plain (non-editable) ``pip install``, nor after ``pip install -e`` (scripts/setup.sh).

Each install goes to its own --target folder from a copy of the sources (so no build/ folder
lands in the checkout) and is then used from a fresh interpreter started with ``-S``: only
that install and the venv's site-packages are on sys.path, and no .pth file of the venv (its
own editable tsvllm) is processed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tsvllm.host import archive

REPO = Path(__file__).resolve().parents[2]
HANDLERS = sorted(p.name for p in (REPO / "handlers").glob("*.py"))
SITE_PACKAGES = sysconfig.get_paths()["purelib"]

CONFIG = """\
asyncCommunication: true
handler:
  model_path: {model}
  served_model_name: [tiny]
"""

#: run in the fresh interpreter: where DEFAULT_HANDLER points, and `tsvllm archive` with no
#: --handler
PROBE = """
import json, site, sys
# the install first: its .pth files run (the editable finder, whose module name is the same
# as the venv's own), then the venv's site-packages for the dependencies, .pth files unread
site.addsitedir({target!r})
sys.path.append({site_packages!r})
from tsvllm.cli import main
from tsvllm.host.archive import DEFAULT_HANDLER
import tsvllm
code = main(["archive", {config!r}, "--name", "tiny", "--export-path", {store!r}])
print(json.dumps({{"default": str(DEFAULT_HANDLER), "tsvllm": tsvllm.__file__, "code": code}}))
"""


def copy_sources(dest: Path) -> Path:
    for name in ("tsvllm", "handlers"):
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def pip_install(tmp_path: Path, *, editable: bool) -> tuple[Path, Path]:
    src = copy_sources(tmp_path / "src")
    target = tmp_path / "target"
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    cmd += ["--no-deps", "--no-build-isolation", "--target", str(target)]
    cmd += ["-e", str(src)] if editable else [str(src)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=600)
    return src, target


def probe(tmp_path: Path, target: Path) -> dict:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = tmp_path / "model-config.yaml"
    config.write_text(CONFIG.format(model=model))
    store = tmp_path / "store"
    code = PROBE.format(
        site_packages=SITE_PACKAGES, target=str(target), config=str(config), store=str(store)
    )
    run = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, run.stderr[-3000:]
    assert (store / "tiny" / "vllm_handler.py").read_bytes() == (
        REPO / "handlers" / "vllm_handler.py"
    ).read_bytes()
    return out


def test_a_plain_pip_install_ships_the_handler_files(tmp_path):
    _, target = pip_install(tmp_path, editable=False)
    shipped = target / "tsvllm" / "handler_files"
    assert sorted(p.name for p in shipped.glob("*.py")) == HANDLERS
    for name in HANDLERS:
        assert (shipped / name).read_bytes() == (REPO / "handlers" / name).read_bytes()
    out = probe(tmp_path, target)
    assert out["tsvllm"].startswith(str(target))
    assert out["default"] == str(shipped / "vllm_handler.py")


def test_a_plain_pip_install_ships_every_module(tmp_path):
    """A package folder without ``__init__.py`` is left out by find_packages: the
    container's non-editable install once lacked tsvllm.engine."""
    _, target = pip_install(tmp_path, editable=False)
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "tsvllm").rglob("*.py")}
    shipped = {p.relative_to(target).as_posix() for p in (target / "tsvllm").rglob("*.py")}
    assert source - shipped == set()


def test_an_editable_install_resolves_the_handler_files_to_the_checkout(tmp_path):
    src, target = pip_install(tmp_path, editable=True)
    assert not (target / "tsvllm").exists()  # editable: nothing copied
    out = probe(tmp_path, target)
    assert out["tsvllm"].startswith(str(src / "tsvllm"))
    assert out["default"] == str(src / "handlers" / "vllm_handler.py")


@pytest.mark.parametrize("name", HANDLERS)
def test_every_handler_resolves_in_this_environment(name):
    assert archive.handler_file(name).read_bytes() == (REPO / "handlers" / name).read_bytes()
    assert archive.handler_file("vllm_handler.py") == archive.DEFAULT_HANDLER
