"""Debian's GDB in batch mode against ``xinterface run|boot --gdb unix:PATH --gdb-wait``.

UNIX sockets (in the test's directory) keep parallel runs from fighting over TCP ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from xinterface.gdb.packets import frame

GUESTS = Path(__file__).parent.parent / "guests"
# Generous: a deadline only turns a hang into a failure, it measures nothing.
DEADLINE = 120.0
PEER_DEADLINE = 30.0

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="Debian's gdb is missing")


def link_elf(name: str, out: Path) -> Path:
    """tests/guests/NAME.S assembled with line numbers and linked the ordinary way."""
    obj = out / f"{name}.o"
    elf = out / f"{name}.elf"
    subprocess.run(["as", "--32", "-g", "-I", GUESTS, "-o", obj, GUESTS / f"{name}.S"],
                   check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", elf, obj], check=True)
    return elf


class Session(NamedTuple):
    gdb: str          # GDB's output
    status: int       # xinterface's exit status
    output: str       # xinterface's stdout


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    # A connection that leaves before its first packet changes nothing (test_untrusted_client).
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def debug(command: list[str | Path], script: str, sock: Path,
          program: Path | None = None, deadline: float = DEADLINE,
          tcp: bool = False) -> Session:
    """Start ``xinterface COMMAND --gdb unix:SOCK --gdb-wait`` (``tcp``: ``--gdb tcp::PORT``
    on a free port; ``sock`` then only names the script), run GDB's ``script`` (after
    ``target remote``) against it, wait for both."""
    port = free_port() if tcp else 0
    proc = subprocess.Popen([sys.executable, "-m", "xinterface", *map(str, command),
                             "--gdb", f"tcp::{port}" if tcp else f"unix:{sock}",
                             "--gdb-wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    try:
        until = time.monotonic() + deadline
        while not (listening(port) if tcp else sock.exists()):
            if proc.poll() is not None or time.monotonic() > until:
                raise AssertionError(f"no GDB socket: {proc.communicate()[0]}")
            time.sleep(0.05)
        commands = sock.parent / f"{sock.name}.gdb"
        where = f":{port}" if tcp else sock
        commands.write_text(f"set confirm off\nset pagination off\ntarget remote {where}\n"
                            + script)
        gdb = subprocess.run(["gdb", "-batch", "-nx", "-x", commands,
                              *([program] if program else [])],
                             capture_output=True, text=True, timeout=deadline,
                             errors="replace", env={**os.environ, "TERM": "dumb"})
        output, _ = proc.communicate(timeout=deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Session(gdb.stdout + gdb.stderr, proc.returncode, output)


class Peer:
    """A raw protocol client over a UNIX socket, for what GDB itself never sends (or sends
    only at a keypress: Ctrl-C)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(PEER_DEADLINE)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def packet(self, body: bytes) -> bytes:
        """Send one packet and return the reply's body (acks skipped)."""
        self.send(frame(body))
        reply = self.reply()
        assert reply is not None
        return reply

    def reply(self, timeout: float | None = None) -> bytes | None:
        """The next reply's body (acked); None if ``timeout`` passes first."""
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                body, self.buf = self.buf[start + 1 : end], self.buf[end + 3 :]
                with contextlib.suppress(OSError):  # after D the stub has closed already
                    self.send(b"+")
                return body
            self.sock.settimeout(timeout or PEER_DEADLINE)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if timeout is None:
                    raise
                return None
            finally:
                self.sock.settimeout(PEER_DEADLINE)
            if not data:
                raise EOFError
            self.buf += data

    def closed(self) -> bool:
        """The stub closed the connection (EOF) rather than answering."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()
