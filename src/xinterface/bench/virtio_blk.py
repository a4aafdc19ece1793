"""virtio-blk request rate: one guest binary, our VirtioPci(VirtioBlk) against QEMU's
virtio-blk-pci, 4 KiB reads at queue depth 1 and 32.

The guest (guests/virtio_blk.S) is a boot sector that programs PCI 00:03.0 and drives the
legacy interface itself, so the same bytes run on both: QEMU's SeaBIOS boots it from the very
disk it then reads; xinterface runs it with ``load_flat`` on a bare machine with the PCI host
and the device. The guest marks the start and the end of its rounds on the debug console
(bench/marks.py), which leaves out each VMM's start-up (QEMU's firmware included) and the
guest's set-up; QEMU's console is its stdio chardev, read as it writes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, cast

from .. import accel
from ..delivery import Delivery
from ..devices.pci import PciHost
from ..interface import bind
from ..loader import assemble
from ..runner.machine import Machine
from ..virtio.blk import VirtioBlk
from ..virtio.pci import VirtioPci
from .marks import QEMU_MARKS_CONSOLE, Marks, run_marked
from .peer import BOOT_GPA, QEMU, PeerUnavailable

GUESTS = Path(__file__).parent / "guests"
IOBASE = 0xC000
SLOT = 3
DISK_SIZE = 4 << 20
POSTED_POLL = 20e-6
GOOD_EXIT = 1  # debug-exit status after every request completed with VIRTIO_BLK_S_OK


def guest(depth: int, rounds: int) -> bytes:
    return assemble(GUESTS / "virtio_blk.S", gpa=BOOT_GPA,
                    defines={"IOBASE": IOBASE, "DEPTH": depth, "ROUNDS": rounds})


def write_disk(path: Path, boot: bytes) -> Path:
    path.write_bytes((boot + bytes((i * 31) & 0xFF for i in range(256 << 10)))
                     .ljust(DISK_SIZE, b"\0"))
    return path


def marked_span(marks: Marks, who: str, status: object) -> float:
    span = marks.span()
    if span is None:
        raise RuntimeError(f"the virtio-blk guest on {who} ended (status {status}) without "
                           f"both marks: {bytes(marks.text)!r}")
    return span


def _own_seconds(depth: int, rounds: int, disk: Path, doorbells: Delivery) -> float:
    """Seconds of ``rounds`` rounds on xinterface, from the guest's 'S' to its 'E'."""
    boot = guest(depth, rounds)
    write_disk(disk, boot)
    marks = Marks()
    with Machine(memory=32 << 20, console=cast(BinaryIO, marks)) as machine:
        intf = bind(machine)
        host = PciHost()
        device = VirtioBlk(disk)
        intf.on_release(device.close)
        transport = VirtioPci(device, doorbells=doorbells)
        host.add(SLOT, transport.function)
        transport.attach(intf)
        host.attach(intf)
        machine.load_flat(boot, gpa=BOOT_GPA, mode="real")
        # POSTED doorbells wait in the coalesced ring until something drains it; this guest
        # polls memory without exiting, so a poller must (Machine.run's ``poll``).
        poll = POSTED_POLL if doorbells is Delivery.POSTED else None
        result = machine.run(timeout=600, poll=poll)
    if (result.reason, result.exit_code) != ("exit", GOOD_EXIT):
        raise RuntimeError(f"virtio-blk guest ended with {result.reason} {result.exit_code}")
    return marked_span(marks, "xinterface", result.exit_code)


def _qemu_seconds(depth: int, rounds: int, disk: Path) -> float:
    """Seconds of ``rounds`` rounds on QEMU, from the guest's 'S' to its 'E'."""
    write_disk(disk, guest(depth, rounds))
    command = [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", "32", "-nodefaults", "-display", "none",
        "-drive", f"file={disk},format=raw,if=none,id=d0",
        "-device", f"virtio-blk-pci,drive=d0,addr={SLOT},disable-modern=on",
        *QEMU_MARKS_CONSOLE, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]
    marks = Marks()
    status, stderr = run_marked(command, marks, 600)
    if status != GOOD_EXIT:
        raise PeerUnavailable(f"{QEMU} did not run the virtio-blk guest (status {status}): "
                              f"{stderr[-300:]}")
    return marked_span(marks, QEMU, status)


def request_ns(depth: int, rounds: int, *, peer: bool = False,
               doorbells: Delivery = Delivery.SYNC, python_path: bool = False) -> float:
    """ns per 4 KiB read at queue depth ``depth`` over ``rounds`` rounds (QEMU's with
    ``peer``), from the guest's own marks; ``python_path``: on the Python data path even
    when the compiled one is built."""
    if python_path:
        with accel.python_data_path():
            return request_ns(depth, rounds, peer=peer, doorbells=doorbells)
    if peer and shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-blk-") as tmp:
        disk = Path(tmp) / "disk.img"
        seconds = (_qemu_seconds(depth, rounds, disk) if peer
                   else _own_seconds(depth, rounds, disk, doorbells))
    return seconds * 1e9 / (depth * rounds)
