"""virtio-net packets per second: one guest (guests/virtio_net.S), three VMMs' worth of wire.

The guest drives the first virtio-net it finds over virtio-mmio and marks its packet loop on
port 0xe9 ('R' ready, 'S' start, 'E' end); the figure is the time from 'S' to 'E' divided
by the frames, as the host sees the marks arrive. Its loop runs at CPL3, so on a host that
emulates guest kernel code (kvm_pvm) the loop itself runs natively and the device's cost is
what is measured.

- ours, unprivileged: our VirtioNet on a ``SocketBackend``; the far end of the wire is
  another process (:mod:`xinterface.bench.wire`), so no host-side Python shares our GIL.
- ours, TAP: our VirtioNet on a TAP inside a network namespace made for the run; frames for
  the guest come from that other process through an AF_PACKET socket on the TAP's host side.
- QEMU: Debian's ``qemu-system-x86_64 -M microvm`` with ``-netdev tap,vhost=off`` in the same
  namespace, booting the same bytes from a virtio-blk disk through SeaBIOS.

Both of ours are loaded flat (no firmware); doorbells by SYNC xioevent or EVENTFD.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, cast

from .. import accel
from ..delivery import Delivery
from ..interface import bind
from ..loader import assemble
from ..runner.machine import Machine
from ..virtio.mmio import VirtioMmio
from ..virtio.net import SocketBackend, TapBackend, VirtioNet
from ..virtio.net.backend import NetBackend
from .marks import QEMU_MARKS_CONSOLE, Marks, run_marked
from .netns import inside, netns, netns_usable, tap
from .peer import QEMU, PeerUnavailable

GUESTS = Path(__file__).parent / "guests"
BOOT_GPA, ENTRY = 0x7C00, 0x7E00
MMIO_BASE = 0xFEB00000
GUEST_MAC = "52:54:00:12:34:56"
QUEUE_SIZE = 256
FRAME = 60               # bytes, header excluded: the smallest Ethernet frame without FCS
FULL_FRAME = 1500        # a full-size one (an MTU of payload); the guest's buffers are 2 KiB
MEMORY = 8 << 20
TAP_PAUSE = 1e-4         # the TAP injector's first pause between batches of 64 (wire.py)
SEABIOS_MICROVM = "/usr/share/seabios/bios-microvm.bin"
MODES = {"tx": 0, "rx": 1}


def net_image(mode: str, count: int, size: int = FRAME, *, user: bool = True) -> bytes:
    """The guest: a boot sector, then the driver from ``ENTRY``; its packet loop at CPL3
    (``user``) or CPL0."""
    return assemble(GUESTS / "virtio_net.S", gpa=BOOT_GPA, defines={
        "MODE": MODES[mode], "COUNT": count, "SIZE": size, "QSIZE": QUEUE_SIZE,
        "USER": int(user)})


@dataclass
class NetRun:
    """One run: ``count`` frames in ``seconds`` (from 'S' to 'E'); received, ``bad`` times
    the sequence broke (frames dropped on the way; at most 125); what the far end counted
    (frames it read, or sent); the device's counters."""

    count: int
    seconds: float
    bad: int
    far_end: int
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ns_per_packet(self) -> float:
        return self.seconds * 1e9 / self.count

    @property
    def pps(self) -> float:
        return self.count / self.seconds


def _wire(args: list[str], *, fds: tuple[int, ...] = (), ns: str | None = None
          ) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "xinterface.bench.wire", *args]
    if ns is not None:
        command = ["ip", "netns", "exec", ns, *command]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            pass_fds=fds)


def _start(proc: subprocess.Popen[bytes]) -> Callable[[str], None]:
    def on_mark(mark: str) -> None:
        if mark == "R" and proc.stdin is not None:
            proc.stdin.write(b"g")
            proc.stdin.flush()
    return on_mark


def _finish(proc: subprocess.Popen[bytes]) -> int:
    """What the far end counted (-1 if it said nothing)."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out = proc.stdout.read() if proc.stdout is not None else b""
    try:
        return int(out.split()[-1])
    except (IndexError, ValueError):
        return -1


def own(mode: str, count: int, delivery: Delivery = Delivery.SYNC, *,
        backend: str = "socket", ns: str | None = None, tap_name: str = "xitap0",
        timeout: float = 300, size: int = FRAME) -> NetRun:
    """Our VMM, the guest loaded flat, our virtio-net over virtio-mmio at 0xfeb00000;
    frames of ``size`` bytes."""
    image = net_image(mode, count, size)
    net_backend: NetBackend
    if backend == "socket":
        net_backend, peer = SocketBackend.pair()
        args = ["send", "--count", "0", "--size", str(size)] if mode == "rx" else ["recv"]
        proc = _wire([*args, "--fd", str(peer.fileno())], fds=(peer.fileno(),))
        peer.close()
    else:
        if ns is None:
            raise ValueError("a TAP run needs its network namespace")
        with inside(ns):
            net_backend = TapBackend(tap_name)
        args = (["send", "--count", "0", "--pause", str(TAP_PAUSE), "--size", str(size)]
                if mode == "rx" else ["recv"])
        proc = _wire([*args, "--iface", tap_name], ns=ns)
    marks = Marks(_start(proc) if mode == "rx" else lambda mark: None)
    net = VirtioNet(net_backend, mac=GUEST_MAC, queue_size=QUEUE_SIZE)
    try:
        with Machine(memory=MEMORY, console=cast(BinaryIO, marks)) as machine:
            machine.load_flat(image, gpa=BOOT_GPA, mode="protected")
            vcpu = machine.vm.vcpus[0]
            regs = vcpu.get_regs()
            regs.rip = ENTRY
            vcpu.set_regs(regs)
            transport = VirtioMmio(net, MMIO_BASE, doorbells=delivery)
            transport.attach(bind(machine))
            result = machine.run(timeout=timeout)
            transport.detach()
    finally:
        net.close()
        if proc.stdin is not None:
            proc.stdin.close()
        if mode == "rx" or backend == "tap":
            proc.terminate()
    far = _finish(proc)
    return _result(marks, result.reason, result.exit_code, count, far, dict(net.stats))


def _result(marks: Marks, reason: str, exit_code: int | None, count: int, far: int,
            stats: dict[str, int]) -> NetRun:
    if reason != "exit" or exit_code is None or "E" not in marks.times or "?" in marks.times:
        raise RuntimeError(f"the virtio-net guest did not finish: {reason} {exit_code}, "
                           f"output {bytes(marks.text)!r}")
    return NetRun(count, marks.times["E"] - marks.times["S"], exit_code >> 1, far, stats)


def qemu(mode: str, count: int, ns: str, tap_name: str = "xitapq",
         timeout: float = 300, size: int = FRAME) -> NetRun:
    """The same guest on QEMU's microvm, booted from a disk by SeaBIOS, its virtio-net on a
    TAP of namespace ``ns`` with QEMU's user-space backend (vhost off)."""
    if shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-net-") as tmp:
        disk = Path(tmp) / "guest.img"
        disk.write_bytes(net_image(mode, count, size).ljust(2 << 20, b"\0"))
        args = (["send", "--count", "0", "--pause", str(TAP_PAUSE), "--size", str(size)]
                if mode == "rx" else ["recv"])
        proc = _wire([*args, "--iface", tap_name], ns=ns)
        marks = Marks(_start(proc) if mode == "rx" else lambda mark: None)
        command = [
            "ip", "netns", "exec", ns, QEMU, "-accel", "kvm", "-M", "microvm",
            "-bios", SEABIOS_MICROVM, "-m", "64", "-nodefaults", "-no-user-config",
            "-display", "none", "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"if=none,id=disk,file={disk},format=raw",
            "-device", "virtio-blk-device,drive=disk",
            "-netdev", f"tap,id=net,ifname={tap_name},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-device,netdev=net,mac={GUEST_MAC}",
            *QEMU_MARKS_CONSOLE, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        ]
        code, stderr = run_marked(command, marks, timeout)
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        far = _finish(proc)
        # isa-debug-exit: status (value << 1) | 1, as our debug exit.
        if code < 0 or "E" not in marks.times:
            raise PeerUnavailable(f"{QEMU} did not run the virtio-net guest (status {code}): "
                                  f"{stderr.strip()[-300:]}")
        return _result(marks, "exit", code, count, far, {})


def with_tap(run: Callable[[str, str], NetRun], tap_name: str) -> NetRun:
    """``run(ns, tap_name)`` with a fresh namespace holding an up TAP ``tap_name``."""
    if not netns_usable():
        raise PeerUnavailable("TAP runs need root, iproute2 and /dev/net/tun")
    with netns() as ns:
        tap(ns, tap_name, "10.0.2.2/24")
        return run(ns, tap_name)


def figure_samples(quick: bool, scale: float, peers: tuple[str, ...]
                   ) -> tuple[list[tuple[str, Callable[[], float], str | None]], list[str]]:
    """The suite's virtio-net figures as ``(name, sample, reference)``, ns per packet, and
    notices. Always: ours on the unprivileged backend, doorbells SYNC and EVENTFD. With
    ``--peer qemu-net`` (and root): ours on a TAP, and QEMU on a TAP, whose figure is the
    reference of ours."""
    count = max(200, int((1_000 if quick else 5_000) * scale))
    out: list[tuple[str, Callable[[], float], str | None]] = []
    for direction in ("tx", "rx"):
        for delivery in (Delivery.SYNC, Delivery.EVENTFD):
            out.append((f"net.{direction}.{delivery.value}",
                        partial(_own_socket, direction, count, delivery), None))
        if accel.DATA_PATH == "compiled":
            # The Python data path in the same run, for the ratio.
            out.append((f"net.{direction}.eventfd.python",
                        partial(_own_socket, direction, count, Delivery.EVENTFD, True), None))
    notices: list[str] = []
    if "qemu-net" not in peers:
        return out, notices
    if not netns_usable():
        notices.append("net.tap.* and qemu.net.* skipped: TAP runs need root, iproute2 and "
                       "/dev/net/tun")
        return out, notices
    if shutil.which(QEMU) is None:
        notices.append(f"qemu.net.* skipped: {QEMU} not found")
        return out, notices
    qemu_count = max(1_000, int((5_000 if quick else 20_000) * scale))
    for direction in ("tx", "rx"):
        out.append((f"qemu.net.{direction}", partial(_qemu_tap, direction, qemu_count), None))
        for delivery in (Delivery.SYNC, Delivery.EVENTFD):
            out.append((f"net.tap.{direction}.{delivery.value}",
                        partial(_own_tap, direction, count, delivery), f"qemu.net.{direction}"))
        # Full-size frames: the copy and the system call's bytes instead of the per-frame
        # work; EVENTFD only, the faster doorbell.
        full = f"qemu.net.{direction}.{FULL_FRAME}"
        out.append((full, partial(_qemu_tap, direction, qemu_count, FULL_FRAME), None))
        out.append((f"net.tap.{direction}.eventfd.{FULL_FRAME}",
                    partial(_own_tap, direction, count, Delivery.EVENTFD, FULL_FRAME), full))
        if accel.DATA_PATH == "compiled":
            out.append((f"net.tap.{direction}.eventfd.python",
                        partial(_own_tap, direction, count, Delivery.EVENTFD, FRAME, True),
                        f"qemu.net.{direction}"))
    return out, notices


def _own_socket(direction: str, count: int, delivery: Delivery,
                python_path: bool = False) -> float:
    if python_path:
        with accel.python_data_path():
            return own(direction, count, delivery).ns_per_packet
    return own(direction, count, delivery).ns_per_packet


def _own_tap(direction: str, count: int, delivery: Delivery, size: int = FRAME,
             python_path: bool = False) -> float:
    def run(ns: str, tap_name: str) -> NetRun:
        return own(direction, count, delivery, backend="tap", ns=ns, tap_name=tap_name,
                   size=size)
    if python_path:
        with accel.python_data_path():
            return with_tap(run, "xitap0").ns_per_packet
    return with_tap(run, "xitap0").ns_per_packet


def _qemu_tap(direction: str, count: int, size: int = FRAME) -> float:
    def run(ns: str, tap_name: str) -> NetRun:
        return qemu(direction, count, ns, tap_name, size=size)
    return with_tap(run, "xitapq").ns_per_packet
