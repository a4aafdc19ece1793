"""``xinterface serve`` as a backend program (the spec's conventions): capabilities, the
socket given by path or fd, one line per error, exit 0 on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from xinterface.vhost_user.protocol import CONFIG_HEADER, U64, Request, encode_config

from .frontend import Frontend

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = dict(os.environ, PYTHONPATH=str(SRC))


def serve(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "xinterface", "serve", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)


@pytest.mark.parametrize(("kind", "type_"), [("blk", "block"), ("net", "net"), ("rng", "rng"),
                                             ("console", "console")])
def test_print_capabilities(kind: str, type_: str) -> None:
    out, err = serve(kind, "--print-capabilities").communicate(timeout=60)
    assert json.loads(out)["type"] == type_ and err == b""


def test_a_missing_socket_is_one_line_and_status_1(tmp_path: Path) -> None:
    p = serve("rng")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err == b"xinterface serve: give one of --socket-path and --fd\n"
    (tmp_path / "file").write_text("")
    p = serve("rng", "--socket-path", str(tmp_path / "file"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err.count(b"\n") == 1 and b"is not a socket" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_a_signal_then_exits_0(tmp_path: Path, signum: int) -> None:
    path = tmp_path / "rng.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))    # left by a backend that died: replaced
    stale.close()
    p = serve("rng", "--socket-path", str(path))
    try:
        assert wait_for(lambda: _answers(path), timeout=30)
        with Frontend.connect(path) as fe:   # a frontend served when the signal comes
            assert len(fe.call(Request.GET_FEATURES)) == 8
            p.send_signal(signum)
            assert fe.closed_by_backend()
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0 and err == b""
    assert not path.exists()


def _answers(path: Path) -> bool:
    try:
        with Frontend.connect(path) as fe:
            return bool(U64.unpack(fe.call(Request.GET_QUEUE_NUM))[0] == 1)
    except OSError:
        return False


def test_fd_serves_the_connected_frontend_given(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    p = serve("rng", "--fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    with Frontend(ours) as fe:
        assert U64.unpack(fe.call(Request.GET_QUEUE_NUM))[0] == 1
    _, err = p.communicate(timeout=30)   # its one frontend gone: the program ends
    assert p.returncode == 0 and err == b""


def test_fd_takes_a_listening_socket_too(tmp_path: Path) -> None:
    path = tmp_path / "inherited.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    p = serve("rng", "--fd", str(listener.fileno()), pass_fds=(listener.fileno(),))
    listener.close()
    try:
        for _ in range(2):   # one frontend after another
            with Frontend.connect(path) as fe:
                assert U64.unpack(fe.call(Request.GET_QUEUE_NUM))[0] == 1
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0 and err == b""


def test_set_config_reaches_the_served_device(tmp_path: Path) -> None:
    """SET_CONFIG to ``serve console``: a byte written to ``emerg_write`` (virtio-console's
    VIRTIO_CONSOLE_F_EMERG_WRITE, §5.3.4) is the guest's output, on the program's stdout;
    a write outside the configuration space is refused in one line."""
    path = tmp_path / "con.sock"
    p = serve("console", "--socket-path", str(path))
    try:
        assert wait_for(path.exists, timeout=30)
        with Frontend.connect(path) as fe:
            fe.negotiate()
            for byte in b"hi\n":
                assert fe.ack(Request.SET_CONFIG, encode_config(8, bytes([byte, 0, 0, 0]))) == 0
            assert fe.ack(Request.SET_CONFIG, encode_config(250, bytes(8))) == 1
            # The read-only fields are as they were: cols, rows, one port.
            reply = fe.call(Request.GET_CONFIG, encode_config(0, bytes(8)))
            assert reply[CONFIG_HEADER.size:] == struct.pack("<HHI", 0, 0, 1)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0 and out == b"hi\n"
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "SET_CONFIG refused" in lines[0] and "outside" in lines[0], lines
