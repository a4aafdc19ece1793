"""GDB stub figures, ours against QEMU's (``-gdb tcp::PORT -S``) on the same guest: single
steps per second (``s`` round trips) and the time from ``c`` to the stop at a hardware
breakpoint (``Z1``; a software one kills QEMU on kvm_pvm). A raw protocol client; the two
stubs are measured in turn, ROUNDS times, and each figure is the median of its rounds (on
a shared host one round alone swings several times over):
``python -m xinterface.bench.gdb_stub``.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..gdb.packets import frame
from ..loader import assemble
from .peer import QEMU, PeerUnavailable
from .startup import xinterface_command

GUEST = Path(__file__).parent / "guests" / "gdb_loop.S"
STEPS = 300
COUNT = 1000
ROUNDS = 5
TARGET_OFFSET = 0xA  # mov $COUNT,%ecx (6 bytes), dec %ecx (2), jnz (2): `target`


class Client:
    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self.command(b"QStartNoAckMode")
        self.buf = b""

    def command(self, body: bytes) -> bytes:
        self.sock.sendall(frame(body))
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                reply, self.buf = self.buf[start + 1 : end], self.buf[end + 3 :]
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the stub closed the connection")
            self.buf += data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(command: list[str], port: int, target: int) -> tuple[float, float]:
    """(steps per second, ms from ``c`` to the breakpoint's stop) of the stub ``command``
    starts on ``port``."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = Client(port)
        client.command(b"?")
        start = time.perf_counter()
        for _ in range(STEPS):
            if not client.command(b"s").startswith(b"T"):
                raise PeerUnavailable(f"{command[0]}: a step did not stop")
        steps = STEPS / (time.perf_counter() - start)
        client.command(b"Z1,%x,1" % target)
        start = time.perf_counter()
        reply = client.command(b"c")
        to_break = (time.perf_counter() - start) * 1e3
        if not reply.startswith(b"T"):
            raise PeerUnavailable(f"{command[0]}: no stop at the breakpoint ({reply!r})")
        client.sock.sendall(frame(b"k"))
        return steps, to_break
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} not found: apt-get install qemu-system-x86")
    work = Path(tempfile.mkdtemp(prefix="xinterface-gdb-"))
    try:
        flat, bios = work / "loop.bin", work / "loop-bios.bin"
        flat.write_bytes(assemble(GUEST, gpa=0x1000, defines={"RESET": 0, "COUNT": COUNT}))
        bios.write_bytes(assemble(GUEST, gpa=0, defines={"RESET": 1, "COUNT": COUNT}))
        rounds: dict[str, list[tuple[float, float]]] = {"xinterface": [], "qemu": []}
        for _ in range(ROUNDS):
            port = _free_port()
            rounds["xinterface"].append(measure(
                [*xinterface_command(), "run", "--gdb", f"tcp::{port}", "--gdb-wait",
                 str(flat)], port, 0x1000 + TARGET_OFFSET))
            port = _free_port()
            rounds["qemu"].append(measure(
                [QEMU, "-accel", "kvm", "-M", "microvm", "-nodefaults", "-display", "none",
                 "-bios", str(bios), "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
                 "-gdb", f"tcp:127.0.0.1:{port}", "-S"], port, 0xFFFF0000 + TARGET_OFFSET))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'stub':<12}{'steps/s':>10}{'c to break (ms)':>18}   (median of {ROUNDS}; "
          "steps/s min-max)")
    for name, figures in rounds.items():
        steps = [f[0] for f in figures]
        ms = statistics.median(f[1] for f in figures)
        print(f"{name:<12}{statistics.median(steps):>10.0f}{ms:>18.2f}   "
              f"{min(steps):.0f}-{max(steps):.0f}")


if __name__ == "__main__":
    main()
