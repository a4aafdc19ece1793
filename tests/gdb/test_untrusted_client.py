"""A client that breaks the protocol: error replies or a closed connection, never a crash or
a hang of the VMM, and the guest left running or stopped as the protocol says.

One machine runs a spinning guest for the whole module; every test talks raw packets to it
over the UNIX socket and leaves it running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import GUESTS, needs_kvm
from tests.gdb.harness import PEER_DEADLINE as DEADLINE
from tests.gdb.harness import Peer
from xinterface.errors import XInterfaceError
from xinterface.gdb import target
from xinterface.gdb.packets import MAX_PACKET, frame
from xinterface.loader.asm import assemble
from xinterface.runstate import RunState

pytestmark = needs_kvm


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[xi.Machine, Path]]:
    path = tmp_path_factory.mktemp("gdb-client") / "gdb.sock"
    m = xi.Machine(memory=1 << 20, vcpus=2)
    m.load_flat(assemble(GUESTS / "spin.S", gpa=0x1000, bits=32, defines={}), gpa=0x1000,
                mode="protected")
    server = m.serve_gdb(f"unix:{path}")
    results: list[object] = []
    runner = threading.Thread(target=lambda: results.append(m.run(timeout=300)))
    runner.start()
    assert m.wait_for(RunState.RUNNING, DEADLINE)
    try:
        yield m, path
    finally:
        m.stop()
        runner.join(DEADLINE)
        assert not runner.is_alive()
        m.close()  # also closes the server: close never hangs
        assert server is m.debugger or m.debugger is None
        assert not path.exists()
        assert results and results[0].reason == "stopped"  # type: ignore[attr-defined]


def running(m: xi.Machine) -> bool:
    return m.wait_for(RunState.RUNNING, DEADLINE)


def test_a_bad_checksum_is_answered_minus_and_the_next_packet_served(
        machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    peer = Peer(path)
    peer.send(b"$qC#00")
    assert peer.sock.recv(1) == b"-"
    assert peer.packet(b"qC") == b"QC1"        # attached now: the guest is stopped
    assert m.state is RunState.PAUSED
    assert peer.packet(b"qNoSuchThing") == b""  # unknown: the empty reply
    assert peer.packet(b"m1000,zz") == b"E16"   # malformed: EINVAL
    assert peer.packet(b"m1000,100000") == b"E16"  # more than a packet holds
    assert peer.packet(b"Hg9") == b"E01" and peer.packet(b"T9") == b"E01"
    assert peer.packet(b"Z2,1000,4") == b""     # a data watchpoint: unsupported here
    peer.packet(b"D")
    peer.close()
    assert running(m)


def test_a_disconnect_mid_packet_lets_the_guest_run_on(
        machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    peer = Peer(path)
    assert peer.packet(b"?").startswith(b"T")
    assert m.state is RunState.PAUSED
    assert peer.packet(b"Z0,1010,1") == b"OK"    # a breakpoint the guest never reaches
    peer.send(b"$m1000,4")                      # and gone, mid-packet
    peer.close()
    assert running(m)
    # Detached: the breakpoint's int3 is out of guest memory again.
    memory = m.memory
    assert memory is not None and memory.read(0x1010, 1) != b"\xcc"


def test_an_oversized_packet_closes_the_connection(machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    peer = Peer(path)
    assert peer.packet(b"qC") == b"QC1"
    peer.send(b"$" + b"a" * (MAX_PACKET + 10))
    assert peer.closed()
    peer.close()
    assert running(m)


def test_a_second_client_is_turned_away_while_one_is_attached(
        machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    first = Peer(path)
    assert first.packet(b"qC") == b"QC1"
    second = Peer(path)
    assert second.closed()
    second.close()
    assert first.packet(b"qfThreadInfo") == b"m1,2"  # the first is still served
    first.packet(b"D")
    first.close()
    assert running(m)


def test_a_client_that_leaves_before_attaching_changes_nothing(
        machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    for _ in range(3):
        Peer(path).close()
    assert m.state is RunState.RUNNING
    peer = Peer(path)
    assert peer.packet(b"qC") == b"QC1"
    peer.packet(b"D")
    peer.close()
    assert running(m)


def test_ctrl_c_stops_a_continued_guest(machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    peer = Peer(path)
    assert peer.packet(b"qC") == b"QC1"
    peer.send(frame(b"vCont;c"))
    assert running(m)
    peer.send(b"\x03")
    assert peer.reply() == b"T02thread:1;"
    assert m.state is RunState.PAUSED
    regs = peer.packet(b"g")
    assert len(regs) > 16 * 8 and b"xx" in regs    # x87 shown unavailable
    assert peer.packet(b"s").startswith(b"T05thread:1;")
    peer.packet(b"D")
    peer.close()
    assert running(m)


def test_registers_by_g_G_p_P_and_the_thread_by_Hg(machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine
    peer = Peer(path)
    assert peer.packet(b"qC") == b"QC1"
    regs = peer.packet(b"g")
    assert peer.packet(b"G" + regs) == b"OK"     # the x87 part (xx) is left alone
    assert peer.packet(b"g") == regs
    eax = peer.packet(b"p0")
    assert peer.packet(b"P0=78563412") == b"OK" and peer.packet(b"p0") == b"78563412"
    assert m.vcpus[0].vcpu.get_regs().rax == 0x12345678
    assert peer.packet(b"P0=" + eax) == b"OK"
    cr0 = target.I386.number("cr0")
    assert int.from_bytes(bytes.fromhex(peer.packet(b"p%x" % cr0).decode()), "little") & 1
    assert peer.packet(b"p%x" % 999) == b"E16"
    # Hg picks the vCPU that g/p/m read: thread 2 is vCPU 1.
    assert peer.packet(b"Hg2") == b"OK" and peer.packet(b"qC") == b"QC2"
    assert peer.packet(b"P0=efbeadde") == b"OK"
    assert m.vcpus[1].vcpu.get_regs().rax == 0xDEADBEEF
    assert m.vcpus[0].vcpu.get_regs().rax != 0xDEADBEEF
    assert peer.packet(b"Hc-1") == b"OK" and peer.packet(b"Hg1") == b"OK"
    peer.packet(b"D")
    peer.close()
    assert running(m)


def test_threads_hammering_the_socket_never_wedge_it(machine: tuple[xi.Machine, Path]) -> None:
    m, path = machine

    def pound() -> None:
        for _ in range(20):
            try:
                p = Peer(path)
                p.send(b"$?#3f$qC#b4" + b"\x03" * 3)
                p.close()
            except OSError:
                pass

    threads = [threading.Thread(target=pound) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert running(m)
    # Connections that came while another was served were turned away; once they are
    # gone, the next client is served.
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            peer = Peer(path)  # EAGAIN while the backlog is full of the turned away
        except BlockingIOError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
            continue
        try:
            assert peer.packet(b"qC") == b"QC1"
            break
        except (EOFError, ConnectionResetError, BrokenPipeError):
            peer.close()  # turned away: one of the flood was still being served
            assert time.monotonic() < deadline
            time.sleep(0.2)
    peer.packet(b"D")
    peer.close()
    assert running(m)


def test_a_bad_address_is_einval_naming_it(tmp_path: Path) -> None:
    with xi.Machine(memory=1 << 20) as m:
        with pytest.raises(XInterfaceError) as info:
            m.serve_gdb("tcp:1234")
        assert info.value.argument == "gdb"


def test_k_stops_the_run(tmp_path: Path) -> None:
    path = tmp_path / "gdb.sock"
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(assemble(GUESTS / "spin.S", gpa=0x1000, bits=32, defines={}), gpa=0x1000,
                    mode="protected")
        m.serve_gdb(f"unix:{path}", wait=True)
        results: list[object] = []
        runner = threading.Thread(target=lambda: results.append(m.run(timeout=300)))
        runner.start()
        peer = Peer(path)
        assert peer.packet(b"?").startswith(b"T")
        assert peer.packet(b"Z0,1000,1") == b"OK"
        peer.send(frame(b"k"))
        runner.join(DEADLINE)
        assert not runner.is_alive()
        assert results[0].reason == "stopped"  # type: ignore[attr-defined]
        memory = m.memory
        assert memory is not None and memory.read(0x1000, 1) != b"\xcc"  # taken out
        peer.close()
