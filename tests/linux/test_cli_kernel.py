"""``xinterface boot --kernel``: Linux booted directly from the command line, and the one-line
refusals of what cannot boot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli.harness import error_lines, xinterface
from tests.conftest import needs_kvm
from tests.linux.conftest import BUILD

pytestmark = needs_kvm

APPEND = "console=ttyS0 quiet reboot=p panic=-1 noreplace-smp rodata=off"


def test_boot_kernel_reaches_init_with_the_workarounds_said_once(
        linux: dict[str, str]) -> None:
    done = xinterface("boot", "--kernel", linux["vmlinux"], "--initrd", linux["initramfs"],
                      "--append", APPEND, "--until", "XINTERFACE-INIT-OK", "--timeout", "240",
                      timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "XINTERFACE-INIT-OK" in done.stdout
    notes = [ln for ln in done.stderr.splitlines() if "adding to the kernel command line" in ln]
    assert len(notes) <= 1          # said once, and only where the host needs it


def test_boot_kernel_on_the_pc_board_reads_ext2_on_virtio_pci(
        linux: dict[str, str], tmp_path: Path) -> None:
    """No firmware: the VMM routes the PCI interrupt lines as firmware would and lists them in
    the MP table; Linux's virtio-pci driver finds our virtio-blk at 00:03.0, its INTA# on
    IRQ 11, and /init reads a file from its ext2 file system."""
    disk = tmp_path / "disk.img"
    subprocess.run([sys.executable, str(BUILD), "ext2", str(disk), "--file",
                    "hello.txt=hello from our virtio-pci disk"], check=True)
    done = xinterface("boot", "--board", "pc", "--kernel", linux["vmlinux"], "--initrd",
                      linux["initramfs"], "--disk", f"{disk},readonly",
                      "--append", APPEND.replace(" quiet", ""), "--timeout", "240",
                      timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]     # the guest's reboot=p: a reset
    out = done.stdout
    assert "virtio-pci 0000:00:03.0: PCI->APIC IRQ transform: INT A -> IRQ 11" in out, out[-3000:]
    assert "can't find IRQ" not in out
    assert "disk: hello from our virtio-pci disk" in out, out[-3000:]
    assert "XINTERFACE-INIT-DONE" in out


def test_boot_refuses_what_cannot_boot(tmp_path: Path, linux: dict[str, str]) -> None:
    bad = tmp_path / "not-a-kernel"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    huge = tmp_path / "huge-initrd"
    huge.write_bytes(bytes(60 << 20))
    cases = [
        (["--kernel", str(bad)], "kernel"),
        (["--kernel", linux["vmlinux"], "--memory", "64M", "--initrd", str(huge)], "initrd"),
        (["--kernel", linux["vmlinux"], "--cpu", "pentium"], "--cpu"),
        (["--kernel", linux["vmlinux"], "--bios", "/usr/share/seabios/bios.bin"], "exactly one"),
        (["--initrd", linux["initramfs"], "--bios", "/usr/share/seabios/bios.bin"], "--initrd"),
    ]
    for args, word in cases:
        done = xinterface("boot", *args, "--timeout", "30")
        assert done.returncode != 0, (args, done.stdout[-500:])
        lines = error_lines(done.stderr)
        assert len(lines) == 1 and word in lines[0], (args, done.stderr)
