"""What the vhost-user-blk benchmark (:mod:`.vhost_user_blk`) runs: its guest, the backend
processes that serve the disk (``xinterface serve blk``, qemu-storage-daemon's
``vhost-user-blk`` export), and the one QEMU command line for a virtio-blk device, QEMU's
own ``virtio-blk-pci`` or a ``vhost-user-blk-pci`` on a backend.

The guest is guests/virtio_blk_modern.S: a boot sector, then a driver of the modern
virtio-pci interface (qemu-storage-daemon's libvhost-user refuses a device without
VIRTIO_F_VERSION_1), 4 KiB reads at a queue depth, its rounds at CPL3 and marked on the
debug console. SeaBIOS boots it from the disk it reads; our VMM loads it flat.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..loader import assemble
from .marks import QEMU_MARKS_CONSOLE
from .peer import BOOT_GPA, GUESTS, QEMU, PeerUnavailable
from .virtio_blk import SLOT

ENTRY = 0x7E00           # pm_entry: after the boot sector
MEMORY_MIB = 32
QUEUE_SIZE = 256         # the guest's queue; vhost-user-blk-pci's default is 128
STORAGE_DAEMON = "qemu-storage-daemon"
# The processes that can serve the disk: `xinterface serve blk`, qemu-storage-daemon.
BACKENDS = ("serve", "qsd")
SOCKET_WAIT = 30.0


def guest(depth: int, rounds: int) -> bytes:
    """The marked modern virtio-blk guest: ``rounds`` rounds of ``depth`` 4 KiB reads."""
    return assemble(GUESTS / "virtio_blk_modern.S", gpa=BOOT_GPA,
                    defines={"DEPTH": depth, "ROUNDS": rounds})


def backend_command(backend: str, disk: Path, socket: Path) -> list[str]:
    """The command line of ``backend`` (:data:`BACKENDS`) serving ``disk`` at ``socket``."""
    if backend == "qsd":
        return [STORAGE_DAEMON,
                "--blockdev", f"driver=file,node-name=file0,filename={disk}",
                "--blockdev", "driver=raw,node-name=disk0,file=file0",
                "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                            f"addr.path={socket},writable=on"]
    if backend == "serve":
        return [sys.executable, "-m", "xinterface", "serve", "blk", str(disk),
                "--socket-path", str(socket)]
    raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def start_backend(backend: str, disk: Path, socket: Path) -> subprocess.Popen[bytes]:
    """``backend`` serving ``disk``, once it listens at ``socket``; PeerUnavailable if it is
    not installed or does not listen within :data:`SOCKET_WAIT` seconds."""
    command = backend_command(backend, disk, socket)
    if shutil.which(command[0]) is None:
        raise PeerUnavailable(f"{command[0]} not found: apt-get install qemu-system-x86")
    env = dict(os.environ)
    # The serve process imports this very package (a checkout's src/ included).
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + SOCKET_WAIT
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_backend(proc)
            raise PeerUnavailable(f"{command[0]} did not listen on {socket}")
        time.sleep(0.02)
    return proc


def stop_backend(proc: subprocess.Popen[bytes]) -> str:
    """End a backend (SIGTERM, then SIGKILL after 30 s); what it wrote to stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stderr = b""
    if proc.stderr is not None:
        stderr = proc.stderr.read()
        proc.stderr.close()
    return stderr.decode(errors="replace")


def qemu_command(*, disk: Path | None = None, socket: Path | None = None) -> list[str]:
    """QEMU's ``pc`` machine booting the guest from a modern-only virtio-blk at 00:03.0 with
    256-entry queues: its own ``virtio-blk-pci`` on ``disk``, or ``vhost-user-blk-pci`` on
    the backend listening at ``socket`` (exactly one of the two). The guest's RAM is a
    shared memfd either way (a vhost-user backend maps it: SET_MEM_TABLE), so the rows
    differ in the device alone."""
    if (disk is None) == (socket is None):
        raise ValueError("qemu_command takes a disk or a socket")
    if disk is not None:
        device = ["-drive", f"file={disk},format=raw,if=none,id=d0",
                  "-device", "virtio-blk-pci,drive=d0"]
    else:
        device = ["-chardev", f"socket,id=c0,path={socket}",
                  "-device", "vhost-user-blk-pci,chardev=c0"]
    device[-1] += f",addr={SLOT},disable-legacy=on,queue-size={QUEUE_SIZE},bootindex=1"
    return [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", str(MEMORY_MIB), "-nodefaults",
        "-display", "none",
        "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
        "-numa", "node,memdev=mem", *device,
        *QEMU_MARKS_CONSOLE, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]
