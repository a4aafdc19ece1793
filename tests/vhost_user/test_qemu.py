"""QEMU as the frontend: Debian's qemu-system-x86_64 boots SeaBIOS, which finds a
vhost-user-blk-pci disk served by ``xinterface serve blk``, boots its boot sector
(tests/guests/blk_write_boot.S) and reads and writes sectors through INT 13h. QEMU killed
in the middle of a run and started again finds the backend waiting for it."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Assemble, needs_kvm, wait_for

pytestmark = needs_kvm

QEMU = "qemu-system-x86_64"
SEABIOS = Path("/usr/share/seabios/bios.bin")
SRC = Path(__file__).resolve().parents[2] / "src"
SECTOR = 512


class Serve:
    """``xinterface serve ARGS --socket-path PATH`` as a child process; ``prefix``: the
    command it runs under (``ip netns exec NS``)."""

    def __init__(self, directory: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.socket = directory / "blk.sock"
        self.stderr = directory / "serve.err"
        env = dict(os.environ, PYTHONPATH=str(SRC))
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "xinterface", "serve", *args,
                 "--socket-path", str(self.socket)], env=env, stdout=subprocess.DEVNULL,
                stderr=err)
        assert wait_for(self.socket.exists, timeout=30), self.stderr.read_text()

    def stop(self) -> int:
        """SIGTERM: the conventions' clean exit, status 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def qemu_args(socket: Path, log: Path) -> list[str]:
    return [QEMU, "-accel", "kvm", "-M", "pc", "-m", "64", "-nodefaults", "-display", "none",
            "-bios", str(SEABIOS),
            "-object", "memory-backend-memfd,id=mem,size=64M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=c0,path={socket}",
            "-device", "vhost-user-blk-pci,chardev=c0,bootindex=1",
            "-chardev", f"file,id=dbg,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


def boot(socket: Path, log: Path) -> str:
    """Run QEMU until the boot sector ends it through isa-debug-exit; the debug console."""
    log.unlink(missing_ok=True)
    done = subprocess.run(qemu_args(socket, log), capture_output=True, timeout=180)
    text = log.read_text(errors="replace") if log.exists() else ""
    # isa-debug-exit: QEMU's status is (value << 1) | 1, and the guest writes 0.
    assert done.returncode == 1, (done.returncode, done.stderr.decode()[-2000:], text[-2000:])
    return text


@pytest.fixture
def disk(guest: Assemble, tmp_path: Path) -> Iterator[tuple[Path, bytes, int]]:
    """A 1 MiB image (SeaBIOS gives a smaller disk no cylinder): the boot sector, a sector
    of data; the boot sector and the sum it prints of that data."""
    assert shutil.which(QEMU), f"{QEMU} is missing: scripts/debian-packages.txt installs it"
    sector1 = bytes((i * 7 + 3) & 0xFF for i in range(SECTOR))
    bootsector = guest("blk_write_boot", gpa=0x7C00, SPIN=0)
    image = tmp_path / "disk.img"
    image.write_bytes((bootsector + sector1).ljust(1 << 20, b"\0"))
    yield image, bootsector, sum(struct.unpack("<256H", sector1)) & 0xFFFF


@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "readonly"])
def test_seabios_under_qemu_boots_from_serve_blk(tmp_path: Path, disk: tuple[Path, bytes, int],
                                                 readonly: bool) -> None:
    image, bootsector, expected = disk
    serve = Serve(tmp_path, "blk", str(image), *(["--readonly"] if readonly else []))
    try:
        text = boot(serve.socket, tmp_path / "debugcon.log")
    finally:
        status = serve.stop()
    assert f"blk boot: sum={expected:04x}" in text, text[-2000:]
    written = image.read_bytes()[2 * SECTOR:3 * SECTOR]
    if readonly:
        assert "blk write: failed" in text, text[-2000:]
        assert written == bytes(SECTOR)
    else:
        assert "blk write: ok" in text, text[-2000:]
        assert written[:16] == bootsector[:16] and written[510:] == b"\x55\xaa"
    assert status == 0, serve.stderr.read_text()
    assert serve.stderr.read_text() == ""   # QEMU's requests were all accepted
    assert not serve.socket.exists()


def test_qemu_killed_mid_run_and_started_again_boots_from_the_same_backend(
        tmp_path: Path, guest: Assemble, disk: tuple[Path, bytes, int]) -> None:
    image, _, expected = disk
    spinning = guest("blk_write_boot", gpa=0x7C00, SPIN=1)
    with image.open("r+b") as f:
        f.write(spinning)
    serve = Serve(tmp_path, "blk", str(image))
    try:
        log = tmp_path / "killed.log"
        qemu = subprocess.Popen(qemu_args(serve.socket, log), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            # The guest has read and written through the backend and spins, rings running.
            assert wait_for(lambda: log.exists() and b"blk write: ok" in log.read_bytes(),
                            timeout=180)
        finally:
            qemu.kill()
            qemu.wait()
        with image.open("r+b") as f:   # the next guest ends its run instead of spinning
            f.write(spinning.replace(b"\xeb\xfe", b"\x90\x90", 1))
        time.sleep(0.2)
        for _ in range(2):   # and once more: the backend serves one QEMU after another
            text = boot(serve.socket, tmp_path / "again.log")
            assert f"blk boot: sum={expected:04x}" in text and "blk write: ok" in text, text
    finally:
        status = serve.stop()
    assert status == 0, serve.stderr.read_text()
