"""The same guest binary on QEMU and on xinterface: ns per debug-console write.

The guest is a boot sector (guests/bootsector.S): QEMU's firmware (SeaBIOS, ``-M pc``) loads
it from an IDE disk and runs it at 0x7c00 in real mode; xinterface runs the same bytes with
``load_flat(gpa=0x7c00, mode="real")``. Each write goes to the debug console on port 0xe9:
QEMU's ``isa-debugcon`` device, xinterface's DebugConsole. QEMU's figure subtracts its
start-up (firmware included) by timing two sizes and dividing the difference.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..loader import assemble
from ..runner.machine import Machine

GUESTS = Path(__file__).parent / "guests"
BOOT_GPA = 0x7C00
QEMU = "qemu-system-x86_64"
DISK_SIZE = 1 << 20


class PeerUnavailable(RuntimeError):
    """QEMU is not installed, or would not run the guest."""


def bootsector(count: int) -> bytes:
    return assemble(GUESTS / "bootsector.S", gpa=BOOT_GPA, defines={"COUNT": count})


def _qemu_seconds(count: int, workdir: Path) -> float:
    disk = workdir / f"boot-{count}.img"
    disk.write_bytes(bootsector(count).ljust(DISK_SIZE, b"\0"))
    console = workdir / "debugcon.out"
    command = [
        QEMU, "-accel", "kvm", "-M", "pc", "-m", "32", "-nodefaults", "-nographic",
        "-drive", f"file={disk},format=raw,if=ide", "-boot", "c",
        "-chardev", f"file,id=dc,path={console}", "-device", "isa-debugcon,iobase=0xe9,chardev=dc",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.perf_counter() - start
    # isa-debug-exit: the guest's write of 0 exits with status (0 << 1) | 1.
    if done.returncode != 1 or console.stat().st_size != count:
        raise PeerUnavailable(f"{QEMU} did not run the boot sector (status {done.returncode}): "
                              f"{done.stderr.strip()[-300:]}")
    return elapsed


def qemu_write_cost(small: int, large: int) -> float:
    """ns per write under QEMU, start-up subtracted: (t(large) - t(small)) / (large - small)."""
    if shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="xinterface-peer-") as tmp:
        t_small = _qemu_seconds(small, Path(tmp))
        t_large = _qemu_seconds(large, Path(tmp))
    return (t_large - t_small) * 1e9 / (large - small)


def own_write_cost(count: int) -> float:
    """ns per write of the same boot sector on xinterface, console to /dev/null."""
    with open("/dev/null", "wb") as sink, Machine(memory=32 << 20, console=sink) as machine:
        machine.load_flat(bootsector(count), gpa=BOOT_GPA, mode="real")
        start = time.perf_counter_ns()
        result = machine.run(timeout=300)
        elapsed = time.perf_counter_ns() - start
    if (result.reason, result.exit_code) != ("exit", 1):
        raise RuntimeError(f"boot sector ended with {result.reason} {result.exit_code}")
    return elapsed / count
