"""``tsvllm launch``'s port check, with real sockets on 127.0.0.1: it checks exactly the ports
a launched TorchServe listens on (inference P, metrics P+2, gRPC P+3 and P+4; management P+1
only with token auth off, else a Unix socket), names a busy one with the flag that moves it,
and accepts a port whose last server left it in TIME_WAIT."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from tsvllm.host import launcher
from tsvllm.host.launcher import LaunchError, check_ports_free, listened_ports, ports_for


def free_block(size: int = 5) -> int:
    """A port P with P..P+size-1 free on 127.0.0.1 (checked with plain binds)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + size):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError("no block of free ports found")


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """A server listening on 127.0.0.1:``port`` (another program holding it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


def test_the_layout_is_the_documented_one():
    # README and --help: inference P, management P+1 (TCP only with token auth off),
    # metrics P+2, gRPC P+3 and P+4; with the default 8080, TorchServe's gRPC 7070 and 7071
    def layout(port: int, *, management_tcp: bool) -> set[int]:
        return set(listened_ports(ports_for(port), management_tcp=management_tcp))

    assert layout(8080, management_tcp=False) == {8080, 8082, 7070, 7071}
    assert layout(8080, management_tcp=True) == {8080, 8081, 8082, 7070, 7071}
    assert layout(20000, management_tcp=False) == {20000, 20002, 20003, 20004}
    assert layout(20000, management_tcp=True) == {20000, 20001, 20002, 20003, 20004}


@pytest.mark.parametrize(
    ("offset", "serves"),
    [
        (0, "the inference API"),
        (2, "metrics"),
        (3, "TorchServe's gRPC inference API"),
        (4, "TorchServe's gRPC management API"),
    ],
)
def test_a_busy_port_launch_needs_is_named_with_the_flag(offset, serves):
    base = free_block()
    with listening(base + offset), pytest.raises(LaunchError) as failed:
        check_ports_free(base, token_auth=True)
    message = str(failed.value)
    assert f"port {base + offset} on 127.0.0.1 is in use" in message
    assert f"--port {base} puts {serves} there" in message
    assert "pick another --port" in message


def test_port_plus_one_is_free_to_use_with_token_auth_on():
    base = free_block()
    with listening(base + 1):
        ports = check_ports_free(base, token_auth=True)  # management: a Unix socket
        assert (ports.inference, ports.metrics) == (base, base + 2)
        with pytest.raises(LaunchError, match=rf"port {base + 1} on 127.0.0.1 is in use"):
            check_ports_free(base, token_auth=False)  # then management is TCP P+1


def test_a_port_left_in_time_wait_is_free(tmp_path):
    base = free_block()
    # a server that binds as TorchServe's do (SO_REUSEADDR) closes a connection first:
    # its side stays in TIME_WAIT on the port after the server is gone
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", base))
        server.listen()
        client = socket.create_connection(("127.0.0.1", base))
        conn, _ = server.accept()
        conn.close()
    assert client.recv(1) == b""
    client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", base))  # the case: a plain bind refuses the port
    assert check_ports_free(base, token_auth=True).inference == base


@pytest.mark.parametrize("port", [0, 65532, 70000])
def test_a_port_whose_block_does_not_fit_is_refused(port):
    with pytest.raises(LaunchError, match=rf"--port {port}: use 1 to 65531"):
        check_ports_free(port, token_auth=True)


def _model(tmp_path) -> list[str]:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return ["--model-id", str(model), "--model-store", str(tmp_path / "store")]


def test_launch_starts_with_port_plus_one_busy_and_stops_when_it_needs_it(
    tmp_path, monkeypatch, capsys
):
    def prepared(args, **kwargs):  # past the port check: stop before building anything
        raise LaunchError("the ports passed")

    monkeypatch.setattr(launcher, "prepare", prepared)
    monkeypatch.setattr(launcher.shutil, "which", lambda name: "/usr/bin/java")
    args = [*_model(tmp_path), "--port", str(free_block())]
    base = int(args[-1])
    with listening(base + 1):
        assert launcher.main(args) == 2
        assert "the ports passed" in capsys.readouterr().err
        assert launcher.main([*args, "--disable-token-auth"]) == 2
    err = capsys.readouterr().err
    assert f"port {base + 1} on 127.0.0.1 is in use" in err and "management API" in err
