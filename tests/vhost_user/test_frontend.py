"""Our VMM as a vhost-user frontend: a virtio device of the boards served by another process.

The backends are real: Debian's qemu-storage-daemon (its vhost-user-blk export, raw and
qcow2) and ``xinterface serve blk`` in a process of its own. SeaBIOS boots a boot sector
through them on both boards (INT 13h reads through the backend's queue). A backend killed
mid-run leaves the device in DEVICE_NEEDS_RESET with a configuration change interrupt, and
with ``reconnect`` the backend that comes back serves the driver's next start. Backends
that reply garbage or never reply are refused in one line, within the timeout.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm, wait_for
from xinterface.boards import attach_microvm, attach_pc
from xinterface.errors import XInterfaceError
from xinterface.spec import VhostUser
from xinterface.vhost_user.device import BLK_WRITEBACK, VhostUserBlk
from xinterface.vhost_user.protocol import HEADER
from xinterface.virtio.blk import VIRTIO_BLK_T_IN
from xinterface.virtio.device import Interrupt, Status
from xinterface.virtio.driver import QueueDriver, bring_up

pytestmark = needs_kvm
PC_BIOS = "/usr/share/seabios/bios.bin"
MICROVM_BIOS = "/usr/share/seabios/bios-microvm.bin"
SECTORS = 8
VIRTIO_BLK_F_CONFIG_WCE = 11   # §5.2.3
SRC = str(Path(__file__).resolve().parents[2] / "src")

Backend = Callable[..., subprocess.Popen[bytes]]


def boot_disk(path: Path, guest: Assemble) -> int:
    """tests/guests/disk_boot.S and SECTORS sectors after it; the sum it prints."""
    data = bytes((i * 7 + i // 512) & 0xFF for i in range(SECTORS * 512))
    path.write_bytes((guest("disk_boot", gpa=0x7C00, SECTORS=SECTORS) + data).ljust(
        2 << 20, b"\0"))
    return int(sum(struct.unpack(f"<{len(data) // 2}H", data))) & 0xFFFF


def wait_listening(process: subprocess.Popen[bytes], path: Path) -> None:
    def up() -> bool:
        assert process.poll() is None, f"the backend exited with {process.returncode}"
        return path.exists()
    assert wait_for(up, 30), f"{path} never appeared"


def qsd_command(image: Path, sock: Path, fmt: str = "raw") -> list[str]:
    """qemu-storage-daemon exporting ``image`` (of ``fmt``) as vhost-user-blk at ``sock``."""
    return ["qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file0,filename={image}",
            "--blockdev", f"driver={fmt},node-name=disk0,file=file0",
            "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                        f"addr.path={sock},writable=on"]


def serve_command(image: Path, sock: Path) -> list[str]:
    return [sys.executable, "-m", "xinterface", "serve", "blk", "--socket-path", str(sock),
            str(image)]


@pytest.fixture
def backend() -> Iterator[Backend]:
    """``backend(command, sock)``: start a backend process and wait for its socket; every
    one started is ended (and reaped) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], sock: Path) -> subprocess.Popen[bytes]:
        if sock.exists():
            sock.unlink()
        process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": SRC})
        started.append(process)
        wait_listening(process, sock)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("board", ["pc", "microvm"])
@pytest.mark.parametrize("server", ["qemu-storage-daemon", "xinterface-serve"])
def test_seabios_boots_a_disk_served_by_another_process(
        tmp_path: Path, guest: Assemble, backend: Backend, board: str, server: str) -> None:
    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    expected = boot_disk(image, guest)
    backend(qsd_command(image, sock) if server == "qemu-storage-daemon"
            else serve_command(image, sock), sock)
    console, log = io.BytesIO(), io.BytesIO()
    with xi.Machine(memory=32 << 20, irqchip=True, console=console) as m:
        attach = attach_pc if board == "pc" else attach_microvm
        m.load_firmware(PC_BIOS if board == "pc" else MICROVM_BIOS)
        platform = attach(m, debugcon=log, serial=io.BytesIO(),
                          vhost_user=[VhostUser("blk", str(sock))])
        result = m.run(timeout=120)
        text = log.getvalue().decode(errors="replace")
        assert (result.reason, result.exit_code) == ("exit", 0x21), text[-3000:]
        assert console.getvalue() == f"sum={expected:04x}\n".encode()
        transport = platform.virtio[0]
        device = transport.device
        assert isinstance(device, VhostUserBlk)
        assert device.stats["started"] >= 1 and not device.stats["backend_lost"]
        # The doorbells went to the backend's kick fds, through KVM, not through us.
        assert transport.stats["doorbell"] == 0
        assert device.stats["notify_relayed"] == 0
        kick = device.doorbell_eventfd(0)
        assert kick is not None
    with pytest.raises(OSError):
        os.fstat(kick)                      # closed with the machine


def test_a_qcow2_image_through_qemu_storage_daemon(tmp_path: Path, guest: Assemble,
                                                   backend: Backend) -> None:
    """The image format is the backend's business: the same boot sector as qcow2."""
    raw, image, sock = tmp_path / "disk.img", tmp_path / "disk.qcow2", tmp_path / "blk.sock"
    expected = boot_disk(raw, guest)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                   check=True)
    backend(qsd_command(image, sock, "qcow2"), sock)
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios", PC_BIOS,
                           "--board", "pc", "--disk", f"vhost-user={sock}", "--serial", "",
                           "--debugcon", os.devnull], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHONPATH": SRC})
    assert done.stdout == f"sum={expected:04x}\n", done.stderr


def test_a_missing_socket_is_one_line_before_the_guest_starts(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    for option in (["--disk"], ["--net"], ["--rng"]):
        done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios", PC_BIOS,
                               "--board", "pc", *option, f"vhost-user={sock}",
                               "--debugcon", "-"], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "PYTHONPATH": SRC})
        assert done.returncode != 0
        assert done.stdout == ""            # SeaBIOS never printed a byte
        assert done.stderr.strip().splitlines() == [
            f"xinterface: vhost-user socket {sock}: No such file or directory (ENOENT)"]


def read_request(intf: xi.XInterface, q: QueueDriver, base: int, sector: int) -> int:
    """A virtio-blk read of one sector at ``base`` (header, data, status); its head."""
    intf.copy_to(base, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
    intf.copy_to(base + 0x200 + 512, b"\xff")
    return q.post([(base, 16, False), (base + 0x200, 512, True), (base + 0x200 + 512, 1, True)])


def test_a_killed_backend_is_device_needs_reset_and_a_new_one_serves_the_next_start(
        tmp_path: Path, backend: Backend) -> None:
    """The driver's side through the transport's calls (virtio/driver.py), the device's
    through a real qemu-storage-daemon: killed (SIGKILL) while the device runs, restarted,
    reconnected, started again by the driver's reset."""
    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    image.write_bytes(b"".join(bytes([i]) * 512 for i in range(8)))
    process = backend(qsd_command(image, sock), sock)
    interrupts: list[Interrupt] = []
    with xi.Machine(memory=4 << 20) as m:
        intf = xi.bind(m)
        device = VhostUserBlk(str(sock), reconnect=0.1, timeout=2.0)
        try:
            def start() -> QueueDriver:
                q = QueueDriver(intf, 0x10000, 64)
                status = bring_up(device, intf, [q], interrupt=interrupts.append)
                assert status & Status.DRIVER_OK and not status & Status.DEVICE_NEEDS_RESET
                return q

            def served(q: QueueDriver, sector: int) -> bool:
                head = read_request(intf, q, 0x20000, sector)
                device.notify(0)            # a doorbell the ioeventfd did not take
                if not wait_for(lambda: q.used_idx != q.last_used, 10):
                    return False
                assert q.used() == [(head, 513)]
                return intf.copy_from(0x20200, 513) == bytes([sector]) * 512 + b"\0"

            q = start()
            assert served(q, 3)
            assert wait_for(lambda: Interrupt.USED in interrupts)
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert wait_for(lambda: bool(device.status & Status.DEVICE_NEEDS_RESET))
            assert Interrupt.CONFIG in interrupts       # the driver was told (§2.1.2)
            assert "closed its socket" in (device.error or "")
            process = backend(qsd_command(image, sock), sock)
            assert wait_for(lambda: device.connected, 10)
            q = start()                                  # the driver's reset and restart
            assert served(q, 5)
        finally:
            device.disconnect()
            device.close()
    fds = os.listdir("/proc/self/fd")
    device.close()                                       # twice: harmless
    assert os.listdir("/proc/self/fd") == fds


class HostileBackend:
    """A peer that accepts a frontend and then ``behave(conn)``: what a broken backend
    does to the first request."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.behave = behave
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self.behave(conn)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def _garbage(conn: socket.socket) -> None:
    conn.recv(HEADER.size)
    conn.sendall(b"\xde\xad\xbe\xef" * 8)
    time.sleep(1.5)


def _silent(conn: socket.socket) -> None:
    conn.recv(HEADER.size)
    time.sleep(1.5)


def _hang_up(conn: socket.socket) -> None:
    conn.recv(HEADER.size)


@pytest.mark.parametrize(("behave", "words"), [
    (_garbage, "are not those of a reply"),
    (_silent, "the backend did not reply within 1.0 s"),
    (_hang_up, "the backend closed the connection instead of replying"),
], ids=["garbage", "never-replies", "hangs-up"])
def test_a_broken_backend_is_refused_in_one_line(
        tmp_path: Path, behave: Callable[[socket.socket], None], words: str) -> None:
    sock = tmp_path / "bad.sock"
    fds = os.listdir("/proc/self/fd")
    peer = HostileBackend(sock, behave)
    started = time.monotonic()
    try:
        with pytest.raises(XInterfaceError) as caught:
            VhostUserBlk(str(sock), timeout=1.0, argument="disks[0]")
    finally:
        peer.close()
    assert time.monotonic() - started < 2.5
    assert caught.value.argument == "disks[0]"
    assert str(sock) in str(caught.value) and "\n" not in str(caught.value)
    # The frontend's errors speak of the backend, its peer.
    assert words in str(caught.value) and "frontend" not in str(caught.value)
    assert os.listdir("/proc/self/fd") == fds            # nothing half-made stays open


def test_a_frozen_backend_is_device_needs_reset_within_the_timeout(
        tmp_path: Path, backend: Backend) -> None:
    """qemu-storage-daemon stopped (SIGSTOP) before the driver starts the device: the
    acknowledgements never come, the start fails after the timeout, the VMM goes on and
    close() returns."""
    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    image.write_bytes(bytes(4096))
    process = backend(qsd_command(image, sock), sock)
    interrupts: list[Interrupt] = []
    with xi.Machine(memory=4 << 20) as m:
        intf = xi.bind(m)
        device = VhostUserBlk(str(sock), timeout=1.0)
        process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status = bring_up(device, intf, [QueueDriver(intf, 0x10000, 64)],
                              interrupt=interrupts.append)
            assert time.monotonic() - started < 5
            assert status & Status.DEVICE_NEEDS_RESET
            assert interrupts == [Interrupt.CONFIG]
            assert not device.connected
        finally:
            process.send_signal(signal.SIGCONT)
            device.disconnect()
            device.close()


def test_a_config_write_goes_to_the_backend_and_reads_back_what_it_holds(
        tmp_path: Path, backend: Backend) -> None:
    """The driver's write of virtio-blk's writeback byte (VIRTIO_BLK_F_CONFIG_WCE, §5.2.6.1)
    is SET_CONFIG to qemu-storage-daemon, which switches its write cache; the byte read
    back (GET_CONFIG) is the daemon's. A write to a read-only field is dropped before it
    reaches the backend (libvhost-user treats a SET_CONFIG it cannot apply as fatal)."""
    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    image.write_bytes(b"".join(bytes([i]) * 512 for i in range(8)))
    backend(qsd_command(image, sock), sock)
    with xi.Machine(memory=4 << 20) as m:
        intf = xi.bind(m)
        device = VhostUserBlk(str(sock), timeout=2.0)
        try:
            assert device.device_features >> VIRTIO_BLK_F_CONFIG_WCE & 1
            before = device.config[BLK_WRITEBACK]
            for value in (before ^ 1, before):
                device.write_config(BLK_WRITEBACK, bytes([value]))
                assert device.config[BLK_WRITEBACK] == value
            assert device.stats["config_write"] == 2
            capacity = bytes(device.config[:8])
            device.write_config(0, bytes(8))             # capacity: read-only
            assert bytes(device.config[:8]) == capacity == (8).to_bytes(8, "little")
            assert device.stats["config_write_dropped"] == 1
            # The backend still serves: the driver starts the device and reads a sector.
            q = QueueDriver(intf, 0x10000, 64)
            status = bring_up(device, intf, [q])
            assert status & Status.DRIVER_OK and not status & Status.DEVICE_NEEDS_RESET
            head = read_request(intf, q, 0x20000, 6)
            device.notify(0)
            assert wait_for(lambda: q.used_idx != q.last_used, 10)
            assert q.used() == [(head, 513)]
            assert intf.copy_from(0x20200, 513) == bytes([6]) * 512 + b"\0"
        finally:
            device.disconnect()
            device.close()


def test_a_legacy_driver_reads_through_qemu_storage_daemon(tmp_path: Path,
                                                           backend: Backend) -> None:
    """A legacy (virtio 0.9.5) driver, as our legacy virtio-pci interface gives it: no
    VERSION_1, no FEATURES_OK. libvhost-user refuses a device without VERSION_1 (and drops
    the connection); its split ring and requests are laid out as a modern driver's on this
    little-endian host, so the proxy tells the backend VERSION_1 and the reads are served."""
    image, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    image.write_bytes(b"".join(bytes([i]) * 512 for i in range(8)))
    backend(qsd_command(image, sock), sock)
    interrupts: list[Interrupt] = []
    with xi.Machine(memory=4 << 20) as m:
        intf = xi.bind(m)
        device = VhostUserBlk(str(sock), timeout=2.0)
        try:
            device.connect(intf, lambda kind, queue=None: interrupts.append(kind), legacy=True)
            assert not device.device_features >> 32          # no VERSION_1 offered
            device.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
            device.set_driver_features(0, device.device_features)
            q = QueueDriver(intf, 0x10000, 64)
            vq = device.queues[0]
            vq.size, vq.desc_addr, vq.avail_addr, vq.used_addr = (
                q.size, q.desc_addr, q.avail_addr, q.used_addr)
            device.set_queue_ready(0, True)
            device.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK)
            assert not device.status & Status.DEVICE_NEEDS_RESET, device.error
            for sector in (2, 7):
                head = read_request(intf, q, 0x20000, sector)
                device.notify(0)
                assert wait_for(lambda: q.used_idx != q.last_used, 10)
                assert q.used() == [(head, 513)]
                assert intf.copy_from(0x20200, 513) == bytes([sector]) * 512 + b"\0"
            assert device.connected and not device.stats["backend_lost"]
        finally:
            device.disconnect()
            device.close()
