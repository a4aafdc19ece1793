"""``xinterface boot --kernel``: Linux booted directly from the command line, and the one-line
refusals of what cannot boot."""

from __future__ import annotations

from pathlib import Path

from tests.cli.harness import error_lines, xinterface
from tests.conftest import needs_kvm

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
