"""Linux boots on our VMM: the test kernel (guests/linux/) through PVH and through the bzImage
boot protocol, to the busybox /init marker, and ends the run cleanly (a keyboard-controller
reset, ``reboot=k``). Real KVM, real kernel, real busybox; the console is our 16550A."""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from xinterface.devices.platform import Until, attach_microvm
from xinterface.kvm import Kvm
from xinterface.loader import cpuid
from xinterface.loader.cpuid_probe import host_cpuid_probe, linux_cmdline_workarounds
from xinterface.loader.linux import LoadedKernel, load_linux
from xinterface.loader.linux.bzimage import XLF_KERNEL_64, parse_setup_header
from xinterface.loader.linux.pvh import parse_vmlinux

pytestmark = needs_kvm

MARKER = b"XINTERFACE-INIT-OK"
DONE = b"XINTERFACE-INIT-DONE"
MEMORY = 128 << 20
# console=ttyS0: our COM1. reboot=k: reboot -f pulses the keyboard controller's reset line,
# which ends the run ("reset"). panic=-1: a panic ends it at once too (and is reported).
# noreplace-smp: skip rewriting every LOCK prefix for one CPU (seconds of emulated stores).
BASE_CMDLINE = "console=ttyS0 quiet reboot=k panic=-1 noreplace-smp"
BOOT_TIMEOUT = 240.0


@dataclass
class Boot:
    result: xi.RunResult
    console: str
    loaded: LoadedKernel
    marker_at: float | None    # seconds from the Machine's creation to the marker
    seconds: float


def cmdline_for(linux: dict[str, str]) -> str:
    features = json.loads(Path(linux["features"]).read_text())["x86_features"]
    return " ".join([BASE_CMDLINE, *linux_cmdline_workarounds(host_cpuid_probe(), features)])


def boot(kernel: str, initrd: str, cmdline: str, *, vcpus: int = 1) -> Boot:
    started = time.monotonic()
    out = io.BytesIO()
    marker_at: list[float] = []
    with xi.Machine(memory=MEMORY, vcpus=vcpus, irqchip=True) as m:
        with Kvm() as kvm:
            supported = kvm.get_supported_cpuid()
        for index, loop in enumerate(m.vcpus):
            loop.vcpu.set_cpuid2(cpuid.baseline(supported, index))
        watch = Until(out, MARKER, lambda: marker_at.append(time.monotonic() - started))
        attach_microvm(m, serial=watch, debugcon=io.BytesIO())
        assert m.memory is not None
        loaded = load_linux(m.memory, [loop.vcpu for loop in m.vcpus],
                            Path(kernel).read_bytes(), initrd=Path(initrd).read_bytes(),
                            cmdline=cmdline)
        result = m.run(timeout=BOOT_TIMEOUT)
    console = out.getvalue().decode(errors="replace")
    run = Boot(result, console, loaded, marker_at[0] if marker_at else None,
               time.monotonic() - started)
    print(f"{Path(kernel).name}: marker at {run.marker_at} s, run ended ({result.reason}) "
          f"at {run.seconds:.1f} s; exits {dict(result.exits)}", file=sys.stderr)
    return run


def check_clean_boot(run: Boot) -> None:
    tail = run.console[-3000:]
    assert MARKER.decode() in run.console, f"no init marker; console ends:\n{tail}"
    assert "Kernel panic" not in run.console, tail
    assert DONE.decode() in run.console, tail
    assert run.result.reason == "reset", f"run ended with {run.result.reason}:\n{tail}"


def test_real_images_parse(linux: dict[str, str]) -> None:
    header = parse_setup_header(Path(linux["bzImage"]).read_bytes())
    assert header.version >= 0x020F and header.xloadflags & XLF_KERNEL_64
    assert header.kernel_version.startswith(linux["kernel_release"])
    image = parse_vmlinux(Path(linux["vmlinux"]).read_bytes())
    system_map = Path(linux["config"]).with_name("System.map").read_text()
    pvh_start = next(int(line.split()[0], 16) for line in system_map.splitlines()
                     if line.endswith(" pvh_start_xen"))
    assert image.entry == pvh_start   # pvh_start_xen runs at its physical address


def test_vmlinux_boots_through_pvh_to_init(linux: dict[str, str]) -> None:
    cmdline = cmdline_for(linux)
    run = boot(linux["vmlinux"], linux["initramfs"], cmdline)
    check_clean_boot(run)
    assert run.loaded.protocol == "pvh"
    assert f"cmdline: {cmdline}" in run.console     # /init read /proc/cmdline


def test_bzimage_boots_through_the_boot_protocol_to_init(linux: dict[str, str]) -> None:
    run = boot(linux["bzImage"], linux["initramfs"], cmdline_for(linux))
    check_clean_boot(run)
    assert run.loaded.protocol == "bzimage"


def test_two_vcpus_through_the_mp_table(linux: dict[str, str]) -> None:
    run = boot(linux["vmlinux"], linux["initramfs"], cmdline_for(linux).replace(" quiet", ""),
               vcpus=2)
    check_clean_boot(run)
    assert "Brought up 1 node, 2 CPUs" in run.console
