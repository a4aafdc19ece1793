"""GDB on an ELF guest with symbols, as a user debugs one: one session, many commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from tests.gdb.harness import Session, debug, link_elf, needs_gdb

pytestmark = [needs_kvm, needs_gdb]

SCRIPT = """\
break func
continue
info registers eip
x/4wx &counter
x/1bx func
print (int)counter
set var *(int*)&counter = 100
print (int)counter
stepi
info registers eip
next
monitor exits
monitor ranges
watch *(int*)&counter
python
try:
    gdb.execute("continue")
except gdb.error as exc:
    print("refused:", exc)
end
delete
set can-use-hw-watchpoints 0
watch *(int*)&counter
continue
delete
continue
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, Path]:
    tmp = tmp_path_factory.mktemp("gdb-elf")
    elf = link_elf("gdb_prog", tmp)
    return debug(["run", elf], SCRIPT, tmp / "gdb.sock", elf), elf


def test_the_ordinary_link_runs_without_gdb(session: tuple[Session, Path]) -> None:
    from tests.cli.harness import xinterface

    # ld -Ttext puts the ELF header at 0xff000, below e_entry: the run starts at e_entry.
    assert xinterface("run", session[1]).returncode == (7 << 1) | 1


def test_break_continue_info_registers(session: tuple[Session, Path]) -> None:
    out = session[0].gdb
    assert "Breakpoint 1, func () at" in out
    assert re.search(r"eip\s+0x100021\s+0x100021 <func>", out), out


def test_memory_shows_the_original_bytes_and_set_var_writes_it(
        session: tuple[Session, Path]) -> None:
    out = session[0].gdb
    assert re.search(r"0x101000:\s+0x00000005\s+0x00000000", out), out
    assert re.search(r"<func>:\s+0x55", out), out  # push %ebp, not the planted int3
    assert "$1 = 5" in out and "$2 = 100" in out


def test_stepi_and_next(session: tuple[Session, Path]) -> None:
    out = session[0].gdb
    assert re.search(r"eip\s+0x100022\s+0x100022 <func\+1>", out), out
    assert re.search(r"^18\s+addl\s+\$1, counter", out, re.M), out


def test_monitor_commands(session: tuple[Session, Path]) -> None:
    out = session[0].gdb
    assert re.search(r"vcpu0: .*internal_error 1", out), out  # the int3 of break func
    assert "pio xioevent" in out or "none" in out


def test_a_hardware_watchpoint_is_refused_and_gdbs_own_one_works(
        session: tuple[Session, Path]) -> None:
    out = session[0].gdb
    assert "Could not insert hardware watchpoint" in out and "refused:" in out, out
    # The software watchpoint single-steps the guest until the value changes: 100 -> 101.
    assert re.search(r"Old value = 100\s+New value = 101", out), out


def test_the_guest_ends_with_its_own_status(session: tuple[Session, Path]) -> None:
    run, _ = session
    # counter: 100 set by GDB, + 1 by each call of func.
    assert run.status == (102 << 1) | 1, run
    assert "exited with code 0315" in run.gdb, run.gdb


def test_over_tcp_control_registers_set_a_register_and_kill(tmp_path: Path) -> None:
    elf = link_elf("gdb_prog", tmp_path)
    run = debug(["run", elf], """\
show architecture
break func
continue
info registers cr0 cs efer
set $edi = 0x1234
printf "edi %#x\\n", $edi
kill
""", tmp_path / "gdb.sock", elf, tcp=True)
    out = run.gdb
    assert '(currently "i386")' in out, out   # protected mode, 32-bit: i386
    assert "Breakpoint 1, func () at" in out, out
    assert re.search(r"cr0\s+0x[0-9a-f]*[13579bdf]\s", out), out   # CR0.PE: protected mode
    assert re.search(r"cs\s+0x8\s", out) and re.search(r"efer\s+0x0\s", out), out
    assert "edi 0x1234" in out, out
    assert "[Inferior 1 (Remote target) killed]" in out, out
    assert run.status is not None and run.status != (7 << 1) | 1, run  # stopped, not run out
