"""Start-up, the whole process: ``xinterface run`` of a prebuilt guest, and QEMU running the
same code as its firmware (``-M microvm``, no firmware of its own), each from exec to exit.

The guest (guests/startup.S) writes one byte to the debug console and exits through the debug
exit port, so both processes do the least a VMM can: create a VM, run a few instructions,
tear it down. Each sample is the median of a few starts (a single start is noisy).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from ..loader import assemble
from .peer import QEMU, PeerUnavailable

GUESTS = Path(__file__).parent / "guests"
STARTS = 5            # per sample
EXIT_STATUS = 1       # the guest's debug exit: (0 << 1) | 1


@cache
def _images() -> tuple[Path, Path]:
    """The flat binary for xinterface and the 64 KiB firmware image for QEMU, in a directory
    of this process's (removed at exit)."""
    import atexit
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="xinterface-startup-"))
    atexit.register(shutil.rmtree, workdir, True)
    flat, firmware = workdir / "startup.bin", workdir / "startup-bios.bin"
    flat.write_bytes(assemble(GUESTS / "startup.S", gpa=0x1000, defines={"RESET": 0}))
    firmware.write_bytes(assemble(GUESTS / "startup.S", gpa=0, defines={"RESET": 1}))
    return flat, firmware


def xinterface_command() -> list[str]:
    """The ``xinterface`` command of this interpreter's environment (its console script, as a
    user runs it), else ``python -m xinterface``."""
    script = shutil.which("xinterface", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "xinterface"]


def qemu_command(firmware: Path) -> list[str]:
    return [QEMU, "-accel", "kvm", "-M", "microvm", "-nodefaults", "-display", "none",
            "-bios", str(firmware), "-chardev", "file,id=dc,path=/dev/null",
            "-device", "isa-debugcon,iobase=0xe9,chardev=dc",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]


def _median_start_us(command: list[str]) -> float:
    times = []
    for _ in range(STARTS):
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False, timeout=60)
        times.append(time.perf_counter() - start)
        if done.returncode != EXIT_STATUS:
            said = done.stderr.decode(errors="replace").strip()[-300:]
            raise PeerUnavailable(f"{command[0]} did not run the start-up guest (status "
                                  f"{done.returncode}): {said}")
    return statistics.median(times) * 1e6


def own_start_us() -> float:
    """µs from exec to exit of ``xinterface run startup.bin``."""
    flat, _ = _images()
    return _median_start_us([*xinterface_command(), "run", str(flat)])


def qemu_start_us() -> float:
    """µs from exec to exit of QEMU running the same code as its firmware."""
    if shutil.which(QEMU) is None:
        raise PeerUnavailable(f"{QEMU} not found: apt-get install qemu-system-x86")
    _, firmware = _images()
    return _median_start_us(qemu_command(firmware))
