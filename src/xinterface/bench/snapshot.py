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


# --- Linux: boot to /init against restore to the same point ---------------------------------

LINUX_APPEND = "console=ttyS0 quiet reboot=p panic=-1 noreplace-smp rodata=off"
INIT_MARKER = "XINTERFACE-INIT-OK"   # guests/linux/init.sh's first line
# The snapshot is taken with the marker's last bytes still to print, so that a restore, like
# a boot, ends when the marker has appeared.
MARKER_HEAD, MARKER_TAIL = INIT_MARKER[:-3], INIT_MARKER[-3:]
LINUX_TIMEOUT = 1800.0   # a loaded 2-core host has taken over 10 min to boot it
KERNEL_ENV, INITRD_ENV = "XINTERFACE_LINUX_KERNEL", "XINTERFACE_LINUX_INITRD"


class LinuxUnavailable(RuntimeError):
    """The Linux test kernel is not built (or not named): the Linux figures are skipped."""


@cache
def linux_images() -> tuple[str, str]:
    """The test kernel (vmlinux) and initramfs: ``$XINTERFACE_LINUX_KERNEL`` and
    ``$XINTERFACE_LINUX_INITRD``, else what the checkout's guests/linux/build.py built into
    its cache (never built here: that takes many minutes)."""
    import importlib.util

    given = os.environ.get(KERNEL_ENV), os.environ.get(INITRD_ENV)
    if given[0] and given[1]:
        return given[0], given[1]
    script = Path(__file__).resolve().parents[3] / "guests" / "linux" / "build.py"
    spec = importlib.util.spec_from_file_location("xinterface_linux_build", script)
    if not script.is_file() or spec is None or spec.loader is None:
        raise LinuxUnavailable(f"no {script} (an installed package: set {KERNEL_ENV} and "
                               f"{INITRD_ENV})")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    try:
        root = build.cache_root()
        kernel = root / f"kernel-{build.kernel_inputs_hash()}" / "vmlinux"
        initrd = root / f"initramfs-{build.initramfs_inputs_hash()}" / "initramfs.cpio"
    except build.BuildError as exc:
        raise LinuxUnavailable(str(exc)) from None
    if not (kernel.is_file() and initrd.is_file()):
        raise LinuxUnavailable(f"the test kernel is not built: run {script}")
    return str(kernel), str(initrd)


def _xinterface(*args: str) -> float:
    """``xinterface ARGS`` in a new process, exec to exit, in ms (status 0 wanted)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xinterface", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=LINUX_TIMEOUT + 60, check=False)
    took = (time.perf_counter() - start) * 1e3
    if done.returncode != 0:
        raise RuntimeError(f"xinterface {args[0]} failed: {done.stderr.strip()[-300:]}")
    return took


def _boot_args() -> list[str]:
    kernel, initrd = linux_images()
    return ["boot", "--kernel", kernel, "--initrd", initrd, "--append", LINUX_APPEND,
            "--timeout", str(LINUX_TIMEOUT)]


def linux_boot_to_init_ms() -> float:
    """``xinterface boot --kernel`` from exec until /init's marker has appeared."""
    return _xinterface(*_boot_args(), "--until", INIT_MARKER)


@cache
def linux_snapshot() -> str:
    """A snapshot of the test kernel booted up to /init's marker but its last bytes."""
    directory = str(_workdir() / "linux")
    _xinterface(*_boot_args(), "--snapshot-on", MARKER_HEAD, "--snapshot", directory)
    return directory


def linux_restore_to_init_ms() -> float:
    """``xinterface restore`` of :func:`linux_snapshot` from exec until the marker has
    appeared: the same point as :func:`linux_boot_to_init_ms`'s end."""
    return _xinterface("restore", linux_snapshot(), "--until", MARKER_TAIL,
                       "--timeout", str(LINUX_TIMEOUT))
