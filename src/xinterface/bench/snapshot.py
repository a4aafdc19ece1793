"""Restore figures: how long a restore takes, in this process and as a new one, for a small
and a large guest (a restore maps memory files copy-on-write, so it should not grow with
RAM), and how much disk a snapshot takes.

The guest (guests/startup.S) writes one byte to the debug console and exits through the
debug exit port; it is snapshotted loaded, before its first instruction, so a process
restore's time runs from exec to the guest's exit: a few instructions past the first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

from ..loader import assemble

GUESTS = Path(__file__).parent / "guests"
SIZES = {"64m": 64 << 20, "1g": 1 << 30}


@cache
def _workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="xinterface-bench-snapshot-"))
    atexit.register(shutil.rmtree, workdir, True)
    return workdir


@cache
def snapshot_of(label: str) -> str:
    """A snapshot of the start-up guest in a ``SIZES[label]`` machine (made once)."""
    from ..runner.machine import Machine
    from ..snapshot import snapshot

    directory = str(_workdir() / label)
    image = assemble(GUESTS / "startup.S", gpa=0x1000, defines={"RESET": 0})
    with open(os.devnull, "wb") as sink, Machine(memory=SIZES[label], console=sink) as machine:
        machine.load_flat(image, gpa=0x1000, mode="real")
        snapshot(machine, directory)
    return directory


def restore_ms(label: str) -> float:
    """One restore in this process, from reading the manifest to a machine ready to run."""
    from ..snapshot import restore

    directory = snapshot_of(label)
    with open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        machine = restore(directory, console=sink)
        took = time.perf_counter() - start
        machine.close()
    return took * 1e3


_PROCESS = ("import sys, os\n"
            "from xinterface.snapshot import restore\n"
            "m = restore(sys.argv[1], console=open(os.devnull, 'wb'))\n"
            "sys.exit(0 if m.run(timeout=30).reason == 'exit' else 1)\n")


def process_restore_ms(label: str) -> float:
    """A new process that restores and runs the guest to its exit: exec to exit."""
    directory = snapshot_of(label)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PROCESS, directory], check=True)
    return (time.perf_counter() - start) * 1e3


def snapshot_mib(label: str) -> float:
    """Disk the snapshot takes (allocated blocks: zero pages are holes)."""
    directory = Path(snapshot_of(label))
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir()) / (1 << 20)


_diffs = iter(range(1 << 30))


def diff_kib(label: str) -> float:
    """A restore, four pages changed, a diff snapshot: the disk it takes (KiB allocated)."""
    from ..snapshot import restore, snapshot

    directory = _workdir() / f"diff-{label}-{next(_diffs)}"
    with open(os.devnull, "wb") as sink, restore(snapshot_of(label), console=sink) as machine:
        assert machine.memory is not None
        machine.memory.write(0x100000, b"\x5a" * (4 << 12))
        snapshot(machine, directory, diff=True)
    size = sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.suffix == ".bin")
    shutil.rmtree(directory, True)
    return size / 1024
