"""What is the guest's stays the guest's: its own ``int3`` and debug exceptions reach its
own handlers with a debugger attached and without one; two vCPUs that stop together are
both reported; a step into ``HLT`` ends."""

from __future__ import annotations

import re
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import GUESTS, needs_kvm
from tests.gdb.harness import PEER_DEADLINE, Peer, debug, link_elf, needs_gdb
from xinterface.gdb.packets import frame
from xinterface.gdb.server import GdbServer
from xinterface.kvm import debug as kvm_debug
from xinterface.kvm import exits
from xinterface.loader.asm import assemble
from xinterface.runner.vcpu_loop import VcpuLoop
from xinterface.runstate import RunState

pytestmark = needs_kvm

# guest_debug.S: one #BP, six #DB (five TF traps, one DR0 hit): bp | db << 4, as exit status.
OWN_EXCEPTIONS = 1 | 6 << 4


def symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", elf], capture_output=True, text=True, check=True).stdout
    return {name: int(addr, 16) for addr, _, name in (line.split() for line in
                                                      out.splitlines() if line.count(" ") == 2)}


def test_the_guests_own_int3_tf_and_dr0_reach_its_handlers_without_a_debugger(
        tmp_path: Path) -> None:
    elf = link_elf("guest_debug", tmp_path)
    sym = symbols(elf)
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(assemble(GUESTS / "guest_debug.S", gpa=0x1000, bits=32, defines={}),
                    gpa=0x1000, mode="protected")
        # The flat image at 0x1000 and the ELF at 0x100000 share their layout.
        delta = 0x100000 - 0x1000
        result = m.run(timeout=60)
        assert result.reason == "exit" and result.exit_code == OWN_EXCEPTIONS << 1 | 1, result
        memory = m.memory
        assert memory is not None
        bp_eip, = struct.unpack("<I", memory.read(sym["bp_eip"] - delta, 4))
        db_eip = struct.unpack("<6I", memory.read(sym["db_eip"] - delta, 24))
        db_dr6 = struct.unpack("<6I", memory.read(sym["db_dr6"] - delta, 24))
    # #BP is a trap: the handler returns after the int3.
    assert bp_eip == sym["after_int3"] - delta
    # TF traps report BS (DR6 bit 14); the DR0 hit is a fault at its address with B0.
    assert all(dr6 & 0x4000 for dr6 in db_dr6[:5]) and db_dr6[5] & 0xF == 1, db_dr6
    assert db_eip[0] == sym["tf_on"] - delta + 1 and db_eip[5] == sym["dr_target"] - delta


def test_a_debug_exit_that_is_not_the_stubs_is_injected_back_into_the_guest(
        tmp_path: Path) -> None:
    # Where KVM hands the guest's own #DB to userspace (hardware KVM while the stub uses
    # debug registers), the stub declines it and the exit loop injects it back. Made to
    # happen here with a debug register the stub did not set, at `finish`.
    elf = link_elf("guest_debug", tmp_path)
    delta = 0x100000 - 0x1000
    sym = {k: v - delta for k, v in symbols(elf).items()}
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(assemble(GUESTS / "guest_debug.S", gpa=0x1000, bits=32, defines={}),
                    gpa=0x1000, mode="protected")
        server = m.serve_gdb(f"unix:{tmp_path / 'gdb.sock'}")
        assert isinstance(server, GdbServer)
        hook: GdbServer = server
        vcpu = m.vcpus[0].vcpu
        debug_regs = (sym["finish"], 0, 0, 0, 0, 0, 0, 1)
        kvm_debug.set_guest_debug(vcpu, kvm_debug.GUESTDBG_ENABLE
                                  | kvm_debug.GUESTDBG_USE_HW_BP, debug_regs)
        declined: list[int] = []

        class OneShot:
            """The server's hook; the foreign debug register goes after its first exit (a
            debugger's breakpoint ignores the RF the guest's handler sets, so it would fire
            again at once)."""

            def hold(self, loop: VcpuLoop) -> bool:
                return hook.hold(loop)

            def stop(self, loop: VcpuLoop, exit: exits.Debug | exits.InternalError) -> bool:
                taken = hook.stop(loop, exit)
                if isinstance(exit, exits.Debug) and not taken:
                    declined.append(exit.pc)
                    kvm_debug.set_guest_debug(vcpu, 0)
                return taken

        m.debugger = OneShot()
        result = m.run(timeout=60)
        m.debugger = server
        memory = m.memory
        assert memory is not None
        db_eip = struct.unpack("<7I", memory.read(sym["db_eip"], 28))
        db_dr6 = struct.unpack("<7I", memory.read(sym["db_dr6"], 28))
    # One more #DB than without it, at `finish`, with B0 in DR6; its handler's RF lets the
    # guest go on.
    assert declined == [sym["finish"]]
    assert result.reason == "exit" and result.exit_code == (1 | 7 << 4) << 1 | 1, result
    assert db_eip[6] == sym["finish"] and db_dr6[6] & 0xF == 1, (db_eip, db_dr6)


@needs_gdb
def test_with_gdb_attached_the_guests_own_exceptions_still_reach_it(tmp_path: Path) -> None:
    elf = link_elf("guest_debug", tmp_path)
    sym = symbols(elf)
    # A software breakpoint in its #BP handler (the guest's int3 gets there), a hardware one
    # at the end (armed through the TF and DR0 part).
    run = debug(["run", elf], """\
break bp_handler
hbreak finish
continue
printf "return %#x\\n", *(int*)$esp
delete 1
continue
printf "bp %d db %d\\n", *(int*)&bp_count, *(int*)&db_count
delete
continue
""", tmp_path / "gdb.sock", elf)
    out = run.gdb
    assert "Breakpoint 1, bp_handler () at" in out, out
    assert f"return {sym['after_int3']:#x}" in out, out
    assert "Breakpoint 2, finish () at" in out, out
    assert "bp 1 db 6" in out, out
    assert run.status == OWN_EXCEPTIONS << 1 | 1, run
    assert f"exited with code 0{OWN_EXCEPTIONS << 1 | 1:o}" in out, out


@needs_gdb
def test_stepi_into_the_guests_own_int3_enters_its_handler(tmp_path: Path) -> None:
    elf = link_elf("guest_debug", tmp_path)
    # (A breakpoint of GDB's on an int3 of the program's GDB steps over itself, moving the
    # PC: so the step into the guest's int3 starts one instruction before it.)
    run = debug(["run", elf], """\
break before_int3
continue
stepi
x/1bx $pc
stepi
info registers eip
printf "bp %d\\n", *(int*)&bp_count
delete
continue
""", tmp_path / "gdb.sock", elf)
    out = run.gdb
    assert "Breakpoint 1, before_int3 () at" in out, out
    assert re.search(r"<own_int3>:\s+0xcc", out), out  # the guest's own byte
    # The step ends at the handler's first instruction, before it ran (as a CPU's).
    assert re.search(r"eip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <bp_handler>\n", out), out
    assert "bp 0" in out, out
    assert run.status == OWN_EXCEPTIONS << 1 | 1, run


@needs_gdb
def test_two_vcpus_at_one_breakpoint_together_are_each_reported(tmp_path: Path) -> None:
    elf = link_elf("gdb_both", tmp_path)
    run = debug(["run", "--vcpus", "2", elf], """\
break hit
python
for _ in range(30):
    try:
        gdb.execute("continue")
    except gdb.error:
        break
end
""", tmp_path / "gdb.sock", elf)
    out = run.gdb
    hits = Counter(re.findall(r"Thread (\d) hit Breakpoint 1, hit \(\)", out))
    # Five calls each, every one reported once: none lost when both stopped together.
    assert hits == {"1": 5, "2": 5}, out
    assert run.status == (5 | 5 << 4) << 1 | 1, run


@needs_gdb
def test_stepi_over_hlt_without_irqchip_ends_the_step_and_the_run(tmp_path: Path) -> None:
    elf = link_elf("gdb_hlt", tmp_path)
    run = debug(["run", elf], """\
break halt_here
continue
stepi
info registers eip
stepi
continue
""", tmp_path / "gdb.sock", elf)
    out = run.gdb
    assert "Breakpoint 1, halt_here () at" in out, out
    after = symbols(elf)["halt_here"] + 1
    assert re.search(rf"eip\s+{after:#x}", out), out
    assert "exited normally" in out, out
    assert run.status == 0 and run.output == "H", run


@pytest.fixture
def hlt_machine(tmp_path: Path) -> Iterator[tuple[xi.Machine, Path, dict[str, int]]]:
    elf = link_elf("hlt_irq", tmp_path)
    sym = {k: v - 0x100000 + 0x1000 for k, v in symbols(elf).items()}
    path = tmp_path / "gdb.sock"
    m = xi.Machine(memory=1 << 20, irqchip=True)
    m.load_flat(assemble(GUESTS / "hlt_irq.S", gpa=0x1000, bits=32, defines={}),
                gpa=0x1000, mode="protected")
    m.serve_gdb(f"unix:{path}", wait=True)
    runner = threading.Thread(target=m.run, kwargs={"timeout": 300})
    runner.start()
    try:
        yield m, path, sym
    finally:
        m.stop()
        runner.join(PEER_DEADLINE)
        assert not runner.is_alive()
        m.close()


def pc(peer: Peer) -> int:
    return int.from_bytes(bytes.fromhex(peer.packet(b"p8").decode()), "little")


def waits_then_ctrl_c_ends_it(peer: Peer, packet: bytes) -> None:
    peer.send(frame(packet))
    assert peer.reply(timeout=2.0) is None  # waiting in HLT with interrupts off
    peer.send(b"\x03")
    assert peer.reply() == b"T02thread:1;"


def test_a_step_into_hlt_with_irqchip_ends_at_a_tick_or_at_ctrl_c(
        hlt_machine: tuple[xi.Machine, Path, dict[str, int]]) -> None:
    m, path, sym = hlt_machine
    peer = Peer(path)
    assert peer.packet(b"?").startswith(b"T")
    # Interrupts on: the step over the hlt ends when a tick has woken the vCPU.
    assert peer.packet(b"Z1,%x,1" % sym["wait_irq"]) == b"OK"
    assert peer.packet(b"c") == b"T05thread:1;hwbreak:;"
    assert peer.packet(b"s") == b"T05thread:1;"
    assert pc(peer) == sym["wait_irq"] + 1
    ticks = int.from_bytes(bytes.fromhex(peer.packet(b"m%x,4" % sym["ticks"]).decode()),
                           "little")
    assert ticks >= 1
    assert peer.packet(b"z1,%x,1" % sym["wait_irq"]) == b"OK"
    # Interrupts off: nothing wakes it. Continuing from a breakpoint on that hlt, stepping
    # the halted vCPU: both wait until Ctrl-C, and the stub serves GDB on.
    assert peer.packet(b"Z1,%x,1" % sym["wait_forever"]) == b"OK"
    assert peer.packet(b"c") == b"T05thread:1;hwbreak:;"
    assert pc(peer) == sym["wait_forever"]
    waits_then_ctrl_c_ends_it(peer, b"c")
    waits_then_ctrl_c_ends_it(peer, b"s")
    waits_then_ctrl_c_ends_it(peer, b"vCont;s:1")
    assert peer.packet(b"qC") == b"QC1"
    # A client that leaves while a step waits: the step ends, the stub detaches.
    peer.send(frame(b"s"))
    assert peer.reply(timeout=1.0) is None
    peer.close()
    assert m.wait_for(RunState.RUNNING, PEER_DEADLINE)
