"""virtio-blk request rate: one guest binary, our VirtioPci(VirtioBlk) against QEMU's
virtio-blk-pci, 4 KiB reads at queue depth 1 and 32.

The guest (guests/virtio_blk.S) is a boot sector that programs PCI 00:03.0 and drives the
legacy interface itself, so the same bytes run on both: QEMU's SeaBIOS boots it from the very
disk it then reads; xinterface runs it with ``load_flat`` on a bare machine with the PCI host
and the device. Each side is timed at two round counts and the difference divided, which
takes start-up (QEMU's firmware included) out.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..delivery import Delivery
from ..devices.pci import PciHost
from ..loader import assemble
from ..machine import Machine
from ..virtio.blk import VirtioBlk
from ..virtio.pci import VirtioPci
from ..xinterface import bind
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


def _disk(path: Path, boot: bytes) -> Path:
    path.write_bytes((boot + bytes((i * 31) & 0xFF for i in range(256 << 10)))
                     .ljust(DISK_SIZE, b"\0"))
    return path


def _own_seconds(depth: int, rounds: int, disk: Path, notify: Delivery) -> float:
    boot = guest(depth, rounds)
    _disk(disk, boot)
    with open("/dev/null", "wb") as sink, Machine(memory=32 << 20, console=sink) as machine:
        intf = bind(machine)
        host = PciHost()
        device = VirtioBlk(disk)
        intf.on_release(device.close)
        transport = VirtioPci(device, notify=notify)
        host.add(SLOT, transport.function)
        transport.attach(intf)
        host.attach(intf)
        machine.load_flat(boot, gpa=BOOT_GPA, mode="real")
        start = time.perf_counter()
        # POSTED doorbells wait in the coalesced ring until something drains it; this guest
        # polls memory without exiting, so a poller must (Machine.run's ``poll``).
        poll = POSTED_POLL if notify is Delivery.POSTED else None
        result = machine.run(timeout=600, poll=poll)
        elapsed = time.perf_counter() - start
    if (result.reason, result.exit_code) != ("exit", GOOD_EXIT):
        raise RuntimeError(f"virtio-blk guest ended with {result.reason} {result.exit_code}")
    return elapsed


def _qemu_seconds(depth: int, rounds: int, disk: Path) -> float:
    _disk(disk, guest(depth, rounds))
    command = [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", "32", "-nodefaults", "-nographic",
        "-drive", f"file={disk},format=raw,if=none,id=d0",
        "-device", f"virtio-blk-pci,drive=d0,addr={SLOT},disable-modern=on",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != GOOD_EXIT:
        raise PeerUnavailable(f"{QEMU} did not run the virtio-blk guest (status "
                              f"{done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed


def request_rate(depth: int, small: int, large: int, *, peer: bool = False,
                 notify: Delivery = Delivery.SYNC) -> float:
    """4 KiB reads per second at queue depth ``depth``, start-up subtracted."""
    if peer and shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-blk-") as tmp:
        disk = Path(tmp) / "disk.img"
        if peer:
            t_small, t_large = (_qemu_seconds(depth, n, disk) for n in (small, large))
        else:
            t_small, t_large = (_own_seconds(depth, n, disk, notify) for n in (small, large))
    # At tiny sizes start-up jitter can exceed the difference; never divide by zero.
    return depth * (large - small) / max(t_large - t_small, 1e-9)


def request_ns(depth: int, small: int, large: int, *, peer: bool = False,
               notify: Delivery = Delivery.SYNC) -> float:
    """ns per 4 KiB read (the inverse of :func:`request_rate`, so lower is better as in
    every other figure)."""
    return 1e9 / request_rate(depth, small, large, peer=peer, notify=notify)
