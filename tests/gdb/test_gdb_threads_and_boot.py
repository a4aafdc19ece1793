"""GDB on two vCPUs (threads), and on a real-mode boot sector under SeaBIOS (``boot``)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from tests.conftest import Assemble, needs_kvm
from tests.gdb.harness import debug, link_elf, needs_gdb

pytestmark = [needs_kvm, needs_gdb]

BIOS = Path("/usr/share/seabios/bios.bin")


def test_two_vcpus_are_two_threads_and_a_stop_names_its_thread(tmp_path: Path) -> None:
    elf = link_elf("gdb_two", tmp_path)
    run = debug(["run", "--vcpus", "2", elf], """\
info threads
break second
continue
info threads
thread 1
print $eip != 0
delete
continue
""", tmp_path / "gdb.sock", elf)
    out = run.gdb
    assert re.search(r"\* 1\s+Thread 1 .*_start", out), out
    assert re.search(r"^\s+2\s+Thread 2 ", out, re.M), out
    assert "Thread 2 hit Breakpoint 1, second ()" in out, out
    assert re.search(r"\* 2\s+Thread 2\s+second \(\)", out), out
    assert "[Switching to thread 1 (Thread 1)]" in out, out
    # vCPU 1 wrote 'B', vCPU 0 saw it done and exited with 0x21.
    assert run.status == 0x43 and run.output == "B", run
    assert "exited with code 0103" in out, out


def test_a_boot_sector_under_seabios_stops_at_0x7c00_as_16_bit_code(
        tmp_path: Path, guest: Assemble) -> None:
    boot = guest("disk_boot", gpa=0x7C00, SECTORS=8)
    data = bytes((i * 7 + i // 512) & 0xFF for i in range(8 * 512))
    disk = tmp_path / "disk.img"
    disk.write_bytes((boot + data).ljust(2 << 20, b"\0"))
    total = sum(struct.unpack(f"<{len(data) // 2}H", data)) & 0xFFFF
    # GDB plants the int3 at the reset vector, before SeaBIOS loads the boot sector over
    # it; in real mode the stub also gives it a debug register, which catches it.
    run = debug(["boot", "--board", "pc", "--bios", BIOS, "--disk", disk], """\
show architecture
break *0x7c00
continue
info registers eip cs
x/2i $pc
delete
continue
""", tmp_path / "gdb.sock")
    out = run.gdb
    assert "(currently \"i8086\")" in out, out
    assert "OS ABI" not in out, out
    assert "Breakpoint 1, 0x00007c00 in ?? ()" in out, out
    assert re.search(r"eip\s+0x7c00", out) and re.search(r"cs\s+0x0\s", out), out
    assert re.search(r"0x7c00:\s+cli\s+0x7c01:\s+xor\s+%ax,%ax", out), out
    assert f"sum={total:04x}" in run.output, run
    assert "exited with code 041" in out, out
