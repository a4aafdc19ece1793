"""GDB on the project's Linux test kernel, booted directly (``boot --kernel``): a hardware
breakpoint on ``start_kernel`` through the kernel's own page tables, a backtrace, then on
to /init's marker."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import needs_kvm
from tests.gdb.harness import debug, needs_gdb

pytestmark = [needs_kvm, needs_gdb]

APPEND = "console=ttyS0 quiet reboot=p panic=-1 noreplace-smp rodata=off"
MARKER = "XINTERFACE-INIT-OK"


def test_gdb_vmlinux_breaks_at_start_kernel_and_boots_on(tmp_path: Path,
                                                         linux: dict[str, str]) -> None:
    run = debug(["boot", "--kernel", linux["vmlinux"], "--initrd", linux["initramfs"],
                 "--append", APPEND, "--until", MARKER, "--timeout", "600"], """\
show architecture
hbreak start_kernel
continue
bt
info registers rip cr3
delete
continue
""", tmp_path / "gdb.sock", Path(linux["vmlinux"]), deadline=700)
    out = run.gdb
    assert '(currently "i386:x86-64")' in out, out
    assert "Breakpoint 1, " in out and "in start_kernel ()" in out, out
    assert "#1  " in out and "secondary_startup_64" in out, out   # bt through guest memory
    assert "<start_kernel>" in out, out
    assert MARKER in run.output and run.status == 0, run.output[-2000:]
    assert "exited normally" in out, out
