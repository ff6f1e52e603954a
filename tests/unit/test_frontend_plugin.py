"""tsvllm's TorchServe frontend plugin: the shipped jar is what its sources compile to, and
TorchServe can find it (its behaviour is tested end to end in tests/e2e/test_readiness.py)."""

from __future__ import annotations

import io
import zipfile

from tsvllm.host import frontend_plugin
from tsvllm.host.torchserve import ts_config_text


def test_the_shipped_jar_is_built_from_the_sources_here():
    # javac is deterministic: a stale jar (sources changed, jar not rebuilt) differs
    fresh = frontend_plugin.jar_bytes(frontend_plugin.compile_classes())
    assert frontend_plugin.jar_path().read_bytes() == fresh, (
        "rebuild it: python -m tsvllm.host.frontend_plugin --build"
    )


def test_the_jar_names_its_endpoint_for_torchserves_service_loader():
    with zipfile.ZipFile(io.BytesIO(frontend_plugin.jar_path().read_bytes())) as jar:
        service = jar.read(frontend_plugin.SERVICE).decode().split()
        names = set(jar.namelist())
    assert service == list(frontend_plugin.ENDPOINT_CLASSES)
    for source in frontend_plugin.SOURCES:
        assert f"org/tsvllm/frontend/{source.removesuffix('.java')}.class" in names
    assert "org/tsvllm/frontend/RestartFix.class" in names


def test_the_generated_config_loads_the_plugin():
    props = dict(line.split("=", 1) for line in ts_config_text().splitlines())
    assert props["plugins_path"] == str(frontend_plugin.plugin_dir())
    assert (frontend_plugin.plugin_dir() / frontend_plugin.JAR_NAME).is_file()


def test_the_command_prints_the_plugins_path(capsys):
    assert frontend_plugin.main([]) == 0
    assert capsys.readouterr().out.strip() == str(frontend_plugin.plugin_dir())
    assert frontend_plugin.main(["--nope"]) == 2
