"""virtio-blk under QEMU three ways, one guest binary: QEMU's own virtio-blk-pci (in
bench/virtio_blk.py), a vhost-user-blk-pci device served by qemu-storage-daemon's
``vhost-user-blk`` export, and the same device served by ``xinterface serve blk``.

The guest is bench/virtio_blk.py's (guests/virtio_blk.S: legacy virtio-pci at 00:03.0, 4 KiB
reads at queue depth 1 or 32, marks on the debug console); SeaBIOS boots it from the disk it
then reads. Only the backend process differs between the vhost-user figures; QEMU, its
vhost-user-blk-pci device and the guest are the same, so their ratio is the backends' alone.

qemu-storage-daemon's export (libvhost-user) refuses a legacy device ("virtio legacy devices
aren't supported by libvhost-user") and drops the connection at SET_FEATURES, so with this
legacy guest only ``xinterface`` runs; the qemu-storage-daemon backend needs a guest that
drives modern virtio-pci.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .marks import QEMU_MARKS_CONSOLE, Marks, run_marked
from .peer import QEMU, PeerUnavailable
from .virtio_blk import GOOD_EXIT, SLOT, guest, marked_span, write_disk

STORAGE_DAEMON = "qemu-storage-daemon"
BACKENDS = ("qemu-storage-daemon", "xinterface")
MEMORY_MIB = 32
SOCKET_WAIT = 30.0


def _backend_command(backend: str, disk: Path, socket: Path) -> list[str]:
    if backend == "qemu-storage-daemon":
        return [STORAGE_DAEMON,
                "--blockdev", f"driver=file,node-name=file0,filename={disk}",
                "--blockdev", "driver=raw,node-name=disk0,file=file0",
                "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                            f"addr.path={socket},writable=on"]
    if backend == "xinterface":
        return [sys.executable, "-m", "xinterface", "serve", "blk", str(disk),
                "--socket-path", str(socket)]
    raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def _start(backend: str, disk: Path, socket: Path) -> subprocess.Popen[bytes]:
    command = _backend_command(backend, disk, socket)
    if shutil.which(command[0]) is None:
        raise PeerUnavailable(f"{command[0]} not found: apt-get install qemu-system-x86")
    env = dict(os.environ)
    # The serve process imports this very package (a checkout's src/ included).
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + SOCKET_WAIT
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise PeerUnavailable(f"{command[0]} did not listen on {socket}: {stderr[-300:]}")
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _qemu_command(socket: Path) -> list[str]:
    return [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", str(MEMORY_MIB), "-nodefaults",
        "-display", "none",
        # vhost-user: the guest's RAM is a shared memfd the backend maps (SET_MEM_TABLE).
        "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
        "-numa", "node,memdev=mem",
        "-chardev", f"socket,id=blk,path={socket}",
        # The guest drives legacy virtio-pci at 00:03.0 and wants 256-entry queues (the
        # device's default is 128).
        "-device", f"vhost-user-blk-pci,chardev=blk,addr={SLOT},disable-modern=on,"
                   "queue-size=256,bootindex=1",
        *QEMU_MARKS_CONSOLE, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]


def request_ns(depth: int, rounds: int, backend: str) -> float:
    """ns per 4 KiB read at queue depth ``depth`` over ``rounds`` rounds, the guest under
    QEMU on a vhost-user-blk-pci device that ``backend`` (one of :data:`BACKENDS`) serves."""
    if shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-vublk-") as tmp:
        disk = write_disk(Path(tmp) / "disk.img", guest(depth, rounds))
        socket = Path(tmp) / "blk.sock"
        proc = _start(backend, disk, socket)
        try:
            marks = Marks()
            status, stderr = run_marked(_qemu_command(socket), marks, 600)
        finally:
            _stop(proc)
        if status != GOOD_EXIT:
            raise RuntimeError(f"the virtio-blk guest under {QEMU} on {backend} ended with "
                               f"status {status}: {stderr[-300:]} {bytes(marks.text)!r}")
        seconds = marked_span(marks, f"{QEMU} on {backend}", status)
    return seconds * 1e9 / (depth * rounds)
