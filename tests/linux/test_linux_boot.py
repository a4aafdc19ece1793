"""Linux boots on our VMM: the test kernel (guests/linux/) through PVH and through the bzImage
boot protocol, to the busybox /init marker, and ends the run cleanly (a keyboard-controller
reset, ``reboot=k``). Real KVM, real kernel, real busybox; the console is our 16550A."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import xinterface as xi
from tests.conftest import needs_kvm
from tests.linux.conftest import BUILD
from xinterface.boards.microvm import attach_microvm, virtio_mmio_slot
from xinterface.boards.virtio import Disk
from xinterface.devices.output import Until
from xinterface.loader.cpuid_probe import host_cpuid_probe, linux_cmdline_workarounds
from xinterface.loader.linux import LoadedKernel, load_linux
from xinterface.loader.linux.bzimage import XLF_KERNEL_64, parse_setup_header
from xinterface.loader.linux.pvh import parse_vmlinux

pytestmark = needs_kvm

MARKER = b"XINTERFACE-INIT-OK"
DONE = b"XINTERFACE-INIT-DONE"
MEMORY = 64 << 20
# console=ttyS0: our COM1. reboot=p: /init's reboot -f writes the reset control register
# (0xcf9), which ends the run ("reset"); reboot=k would too, through the keyboard controller,
# after seconds of polling its status port. panic=-1: a panic ends the run at once as well.
# noreplace-smp: keep the LOCK prefixes rather than rewrite them all for one CPU, and
# rodata=off: no read-only remapping of the kernel; both cost seconds of emulated stores here.
BASE_CMDLINE = "console=ttyS0 reboot=p panic=-1 noreplace-smp rodata=off"
BOOT_TIMEOUT = 240.0
KERNEL_MAP = 0xFFFFFFFF80000000   # __START_KERNEL_map: kernel virtual = physical + this


@dataclass
class Boot:
    result: xi.RunResult
    console: str
    loaded: LoadedKernel
    seen_at: float | None      # seconds from the Machine's creation to the awaited text
    seconds: float


def cmdline_for(linux: dict[str, str], *extra: str) -> str:
    features = json.loads(Path(linux["features"]).read_text())["x86_features"]
    workarounds = linux_cmdline_workarounds(host_cpuid_probe(), features)
    return " ".join([BASE_CMDLINE, *extra, *workarounds])


def boot(kernel: str, initrd: str, cmdline: str, *, vcpus: int = 1, stop_at: bytes | None = None,
         disks: tuple[Disk, ...] = ()) -> Boot:
    """Boot on the microvm board; ``stop_at``: end the run when that text appears, else note
    when the init marker appears and let the guest end the run."""
    started = time.monotonic()
    out = io.BytesIO()
    seen_at: list[float] = []
    with xi.Machine(memory=MEMORY, vcpus=vcpus, irqchip=True, cpu="baseline") as m:

        def seen() -> None:
            seen_at.append(time.monotonic() - started)
            if stop_at is not None:
                m.stop()

        attach_microvm(m, serial=Until(out, stop_at or MARKER, seen), debugcon=io.BytesIO(),
                       disks=disks)
        assert m.memory is not None
        loaded = load_linux(m.memory, [loop.vcpu for loop in m.vcpus],
                            Path(kernel).read_bytes(), initrd=Path(initrd).read_bytes(),
                            cmdline=cmdline)
        result = m.run(timeout=BOOT_TIMEOUT)
    run = Boot(result, out.getvalue().decode(errors="replace"), loaded,
               seen_at[0] if seen_at else None, time.monotonic() - started)
    print(f"{Path(kernel).name}: {(stop_at or MARKER).decode()!r} at {run.seen_at} s, run "
          f"ended ({result.reason}) at {run.seconds:.1f} s; exits {dict(result.exits)}",
          file=sys.stderr)
    return run


def console_tail(run: Boot) -> str:
    return f"run ended with {run.result.reason!r}; console ends:\n{run.console[-3000:]}"


def test_real_images_parse(linux: dict[str, str]) -> None:
    header = parse_setup_header(Path(linux["bzImage"]).read_bytes())
    assert header.version >= 0x020F and header.xloadflags & XLF_KERNEL_64
    assert header.kernel_version.startswith(linux["kernel_release"])
    image = parse_vmlinux(Path(linux["vmlinux"]).read_bytes())
    system_map = Path(linux["config"]).with_name("System.map").read_text()
    pvh_start = next(int(line.split()[0], 16) for line in system_map.splitlines()
                     if line.endswith(" pvh_start_xen"))
    assert image.entry == pvh_start - KERNEL_MAP   # pvh_start_xen, at its physical address


def test_vmlinux_boots_through_pvh_reads_ext2_on_virtio_blk_and_ends_the_run(
        linux: dict[str, str], tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(disk), "--file",
                    "hello.txt=hello from our virtio-blk"], check=True)
    # The microvm board's first virtio-mmio transport, named on the command line as Linux's
    # virtio_mmio.device=<size>@<base>:<irq> (drivers/virtio/virtio_mmio.c).
    base, gsi = virtio_mmio_slot(0)
    cmdline = cmdline_for(linux, "quiet", f"virtio_mmio.device=512@{base:#x}:{gsi}")
    run = boot(linux["vmlinux"], linux["initramfs"], cmdline, disks=(Disk(str(disk), True),))
    assert run.loaded.protocol == "pvh"
    assert MARKER.decode() in run.console, console_tail(run)
    assert f"cmdline: {cmdline}" in run.console, console_tail(run)   # /init read /proc/cmdline
    assert "disk: hello from our virtio-blk" in run.console, console_tail(run)
    assert DONE.decode() in run.console, console_tail(run)
    assert "Kernel panic" not in run.console, console_tail(run)
    assert run.result.reason == "reset", console_tail(run)


def test_bzimage_boot_protocol_hands_over_cmdline_memory_map_and_initrd(
        linux: dict[str, str]) -> None:
    # The decompressor alone takes tens of seconds here (every CPL0 instruction is emulated):
    # the test follows the kernel to the point where it has read the zero page.
    cmdline = cmdline_for(linux, "earlyprintk=serial")
    run = boot(linux["bzImage"], linux["initramfs"], cmdline, stop_at=b"Zone ranges:")
    assert run.loaded.protocol == "bzimage"
    assert run.seen_at is not None, console_tail(run)
    assert f"Command line: {cmdline}" in run.console, console_tail(run)
    assert "BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable" in run.console
    assert "BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved" in run.console
    assert "BIOS-e820: [mem 0x0000000000100000-0x0000000003ffffff] usable" in run.console
    assert run.loaded.initrd is not None
    gpa, size = run.loaded.initrd
    last = (gpa + size + 4095) // 4096 * 4096 - 1      # the kernel prints page-aligned ends
    assert f"RAMDISK: [mem {gpa:#010x}-{last:#010x}]" in run.console, console_tail(run)


def test_two_vcpus_come_up_through_the_mp_table(linux: dict[str, str]) -> None:
    run = boot(linux["vmlinux"], linux["initramfs"], cmdline_for(linux), vcpus=2,
               stop_at=b"smp: Brought up 1 node, 2 CPUs")
    assert run.seen_at is not None, console_tail(run)
    assert "MPTABLE: OEM ID: XINTRFCE" in run.console
    assert "Processors: 2" in run.console
