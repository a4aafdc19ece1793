"""virtio-blk request time with the device in another process: the marked guest of
:mod:`.virtio_blk` (guests/virtio_blk.S, 4 KiB reads at a queue depth) on our pc transport
over a vhost-user backend (``xinterface serve blk``, qemu-storage-daemon), and under QEMU
with qemu-storage-daemon (``vhost-user-blk-pci``), beside our in-process ``VirtioBlk``.

The frontend adds nothing to the data path: the guest's doorbell is an ioeventfd on the
backend's kick fd; this guest polls the used ring, so no call fd is read either. What the
figures compare is the backend and the VMM's exit path, not our Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, cast

from ..devices.pci import PciHost
from ..interface import bind
from ..runner.machine import Machine
from ..vhost_user.device import VhostUserBlk
from ..virtio.pci import VirtioPci
from .marks import QEMU_MARKS_CONSOLE, Marks, run_marked
from .peer import BOOT_GPA, QEMU, PeerUnavailable
from .virtio_blk import GOOD_EXIT, SLOT, guest, marked_span, write_disk

QSD = "qemu-storage-daemon"
MEMORY_MIB = 32
# Where the device is: our VMM over each backend, or QEMU over qemu-storage-daemon.
BACKENDS = ("serve", "qsd", "qemu-qsd")


def _start_backend(kind: str, disk: Path, sock: Path) -> subprocess.Popen[bytes]:
    if kind == "serve":
        command = [sys.executable, "-m", "xinterface", "serve", "blk", "--socket-path",
                   str(sock), str(disk)]
    else:
        if shutil.which(QSD) is None:
            raise PeerUnavailable(f"{QSD} not found: apt-get install qemu-system-common")
        command = [QSD, "--blockdev", f"driver=file,node-name=file0,filename={disk}",
                   "--blockdev", "driver=raw,node-name=disk0,file=file0",
                   "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,"
                               f"addr.type=unix,addr.path={sock},writable=on"]
    # This very package in the backend too (not whichever one the interpreter finds).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise PeerUnavailable(f"{command[0]} did not listen at {sock}")
        time.sleep(0.01)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


def _own_seconds(boot: bytes, sock: Path) -> float:
    marks = Marks()
    with Machine(memory=MEMORY_MIB << 20, console=cast(BinaryIO, marks)) as machine:
        intf = bind(machine)
        host = PciHost()
        device = VhostUserBlk(str(sock))
        intf.on_release(device.close)
        transport = VirtioPci(device)
        host.add(SLOT, transport.function)
        transport.attach(intf)
        host.attach(intf)
        machine.load_flat(boot, gpa=BOOT_GPA, mode="real")
        result = machine.run(timeout=600)
    if (result.reason, result.exit_code) != ("exit", GOOD_EXIT):
        raise RuntimeError(f"virtio-blk guest over vhost-user ended with {result.reason} "
                           f"{result.exit_code}")
    return marked_span(marks, "xinterface", result.exit_code)


def _qemu_seconds(sock: Path) -> float:
    command = [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", str(MEMORY_MIB), "-nodefaults",
        "-display", "none",
        "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
        "-numa", "node,memdev=mem",
        "-chardev", f"socket,id=c0,path={sock}",
        "-device", f"vhost-user-blk-pci,chardev=c0,addr={SLOT},disable-modern=on,bootindex=1",
        *QEMU_MARKS_CONSOLE, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]
    marks = Marks()
    status, stderr = run_marked(command, marks, 600)
    if status != GOOD_EXIT:
        raise PeerUnavailable(f"{QEMU} did not run the virtio-blk guest over {QSD} (status "
                              f"{status}): {stderr[-300:]}")
    return marked_span(marks, QEMU, status)


def request_ns(depth: int, rounds: int, backend: str) -> float:
    """ns per 4 KiB read at queue depth ``depth`` over ``rounds`` rounds, the device in
    ``backend`` (:data:`BACKENDS`), from the guest's own marks."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "qemu-qsd" and shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-vublk-") as tmp:
        disk, sock = Path(tmp) / "disk.img", Path(tmp) / "blk.sock"
        boot = guest(depth, rounds)
        write_disk(disk, boot)
        process = _start_backend("serve" if backend == "serve" else "qsd", disk, sock)
        try:
            seconds = _qemu_seconds(sock) if backend == "qemu-qsd" else _own_seconds(boot, sock)
        finally:
            _stop(process)
            if sock.exists():
                os.unlink(sock)
    return seconds * 1e9 / (depth * rounds)
