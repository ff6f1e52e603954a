"""The quick start's server config: its key is the handler's (no lifetime), and the
management API stays protected (a Unix socket in a private folder, not a TCP port)."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.unit.test_ts_config import parse
from tsvllm.host.launcher import write_handler_auth_config
from tsvllm.host.torchserve import Ports, ts_config_text

REPO = Path(__file__).resolve().parents[2]


def test_it_is_the_default_config_with_token_auth_off_and_management_on_a_unix_socket(tmp_path):
    run = tmp_path / "run"
    path = write_handler_auth_config(run, model_store=tmp_path / "store")
    assert path == run / "config.properties"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700  # only its owner reaches the socket
    props = parse(path.read_text())
    shipped = parse(ts_config_text())  # docker/config.properties (test_ts_config.py)
    changed = {k: v for k, v in props.items() if shipped.get(k) != v}
    assert changed == {
        "disable_token_authorization": "true",  # TorchServe's expiring keys: not used
        "management_address": f"unix:{run / 'management.sock'}",
        "use_native_io": "true",
        "model_store": str(tmp_path / "store"),
        "allowed_urls": changed["allowed_urls"],  # the store only (test_ts_config.py)
    }
    assert set(shipped) <= set(props)


def test_ports_and_extra_settings_are_taken(tmp_path):
    ports = Ports.free()
    path = write_handler_auth_config(
        tmp_path, model_store=tmp_path, ports=ports, extra={"token_expiration_min": "0.1"}
    )
    props = parse(path.read_text())
    assert props["inference_address"] == f"http://127.0.0.1:{ports.inference}"
    assert props["token_expiration_min"] == "0.1"


def test_the_quick_start_starts_torchserve_with_it_and_the_handlers_key():
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    start = script[script.index("torchserve --start") - 200 : script.index("torchserve --start")]
    assert "docker/config.properties" not in script  # TorchServe's own (expiring) token auth
    assert "write_handler_auth_config" in script
    assert 'TSVLLM_API_KEY_FILE="$PWD/key_file.json"' in start
    assert "tsvllm key --new --file key_file.json" in script
