"""The two exit loops (xinterface.accel): which one runs, and the places where the compiled
loop hands an exit back to Python or must behave exactly as the Python one does.

The whole suite runs once with each loop (README's test command sets XINTERFACE_PURE_PYTHON=1
for the second run); these tests hold for both.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.test_ioevent import MMIO_BASE, MMIO_R, MMIO_W, PIO_R, PIO_W, Replay
from tests.test_ioevent import replay as replay  # the fixture, shared
from xinterface import accel
from xinterface.bench.paths import GUESTS as BENCH_GUESTS
from xinterface.loader import assemble

pytestmark = needs_kvm

PIO = xi.XIOEventFlags.PIO
PORT = 0x3FF
FORCED_PYTHON = os.environ.get(accel.PURE_PYTHON_ENV, "") not in ("", "0")


def write_loop(count: int, port: int = PORT) -> bytes:
    """``count`` 1-byte writes to ``port`` in protected mode, then hlt (the benchmark's guest)."""
    return assemble(BENCH_GUESTS / "write_loop.S", gpa=0x1000, bits=32,
                    defines={"COUNT": count, "SIZE": 1, "MMIO": 0, "ADDR": port})


def test_the_compiled_loop_serves_the_exits_when_built() -> None:
    built = importlib.util.find_spec("xinterface._fastloop") is not None
    assert (accel.LOOP == "compiled") == (built and not FORCED_PYTHON)
    got: list[bytes] = []
    console = io.BytesIO()
    with xi.Machine(memory=1 << 20, console=console) as m:
        m.load_flat(write_loop(500), mode="protected")
        xi.bind(m).ioevent(PORT, 1, PIO, signal=lambda ev, payload: got.append(payload))
        result = m.run(timeout=60)
        native = m.vcpus[0].native_exits
        # The debug console is a range device: served in C too (bus_write on IoBus.routes).
        m.load_flat(write_loop(300, 0xE9), mode="protected")
        assert m.run(timeout=60).reason == "hlt"
        native_range = m.vcpus[0].native_exits - native
    assert result.reason == "hlt"
    assert got == [b"A"] * 500
    assert console.getvalue() == b"A" * 300
    if accel.LOOP == "compiled":
        # Every write was served in C: none came back to the Python loop.
        assert (native, native_range) == (500, 300)
    else:
        assert (native, native_range) == (0, 0)


def test_the_reader_slot_is_odd_exactly_while_a_handler_runs() -> None:
    # What deassign() waits on (grace.py): each dispatch makes the vCPU's count odd, then even.
    parities: list[int] = []
    with xi.Machine(memory=1 << 20, debug_ports=False) as m:
        slot = m.vcpus[0].slot
        m.load_flat(write_loop(50), mode="protected")
        xi.bind(m).ioevent(PORT, 1, PIO, signal=lambda ev, payload: parities.append(slot.count))
        assert m.run(timeout=60).reason == "hlt"
        assert slot.count == 2 * 50
    assert parities == [2 * i + 1 for i in range(50)]


def test_posted_event_replaced_mid_drain_gets_the_rest(guest: Assemble) -> None:
    # A handler replaces its own POSTED event at the 50th write: what the ring held when it
    # deassigned still reaches the old handler (deassign delivers it), every later write the
    # new one, in order, none twice: a drain that remembers the event of a run of writes to
    # one address must notice the replacement.
    got: list[tuple[str, int]] = []
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("vcpu_writes", PORT=0x880, COUNT=1000), mode="protected")
        intf = xi.bind(m)

        def new(ev: xi.XIOEvent, payload: bytes) -> None:
            got.append(("new", int.from_bytes(payload, "little")))

        def old(ev: xi.XIOEvent, payload: bytes) -> None:
            got.append(("old", int.from_bytes(payload, "little")))
            if len(got) == 50:
                ev.deassign()
                intf.ioevent(0x880, 4, PIO, signal=new, delivery=xi.Delivery.POSTED)

        intf.ioevent(0x880, 4, PIO, signal=old, delivery=xi.Delivery.POSTED)
        assert m.run(timeout=60).reason == "hlt"
    assert [value for _, value in got] == list(range(1, 1001))
    switch = next(i for i, (who, _) in enumerate(got) if who == "new")
    assert switch >= 50
    assert all(who == "old" for who, _ in got[:switch])
    assert all(who == "new" for who, _ in got[switch:])


def test_an_event_replaced_while_its_posted_writes_drain_gets_none_of_the_rest() -> None:
    # 1-byte writes inside a 4-byte POSTED zone are logged too, and drained to the bus, which
    # hands them to the SYNC event for 1 byte. Its handler replaces it at the 50th write,
    # mid-batch: the rest of the batch must reach the replacement (a drain that remembers
    # the event of a run of writes to one address has to notice).
    counts = {"posted": 0, "first": 0, "second": 0}
    with xi.Machine(memory=1 << 20, debug_ports=False) as m:
        m.load_flat(write_loop(1000, 0x880), mode="protected")
        intf = xi.bind(m)

        def second(ev: xi.XIOEvent, payload: bytes) -> None:
            counts["second"] += 1

        def first(ev: xi.XIOEvent, payload: bytes) -> None:
            counts["first"] += 1
            if counts["first"] == 50:
                ev.deassign()
                intf.ioevent(0x880, 1, PIO, signal=second)

        def posted(ev: xi.XIOEvent, payload: bytes) -> None:
            counts["posted"] += 1

        intf.ioevent(0x880, 4, PIO, signal=posted, delivery=xi.Delivery.POSTED)
        intf.ioevent(0x880, 1, PIO, signal=first)
        assert m.run(timeout=60).reason == "hlt"
    assert counts == {"posted": 0, "first": 50, "second": 950}


@pytest.mark.parametrize("forced", ["1", "0"])
def test_pure_python_variable_picks_the_loop(forced: str) -> None:
    env = {**os.environ, accel.PURE_PYTHON_ENV: forced}
    out = subprocess.run([sys.executable, "-m", "xinterface", "--version"], env=env,
                         capture_output=True, text=True, check=True).stdout
    built = importlib.util.find_spec("xinterface._fastloop") is not None
    loop = "compiled" if built and forced == "0" else "python"
    assert f"exit loop: {loop}" in out


def test_exit_counts_are_the_same_for_every_kind(replay: Callable[[list[tuple[int, int, int, int]]],
                                                                  Replay]) -> None:
    r = replay([(PIO_W, 1, 0x800, 1), (PIO_W, 2, 0x800, 2), (PIO_R, 4, 0x801, 0),
                (MMIO_W, 8, MMIO_BASE, 3), (MMIO_R, 2, MMIO_BASE + 8, 0),
                (MMIO_W, 4, MMIO_BASE, 4)])
    log: list[bytes] = []
    r.intf.ioevent(0x800, 1, PIO, signal=lambda ev, payload: log.append(payload))
    r.intf.ioevent(MMIO_BASE, 8, signal=lambda ev, payload: log.append(payload))
    result = r.machine.run(timeout=30)
    assert result.reason == "hlt"
    assert dict(result.exits) == {"io": 3, "mmio": 3, "hlt": 1}
    assert log == [b"\x01", (3).to_bytes(8, "little")]


def test_strict_refuses_an_unclaimed_write(replay: Callable[[list[tuple[int, int, int, int]]],
                                                            Replay]) -> None:
    r = replay([(PIO_W, 1, 0x800, 1), (MMIO_W, 4, MMIO_BASE + 0x40, 7)])
    r.intf.ioevent(0x800, 1, PIO)
    r.machine.strict = True
    with pytest.raises(xi.GuestIOError) as info:
        r.machine.run(timeout=30)
    assert (info.value.space, info.value.addr, info.value.length) == ("mmio",
                                                                      MMIO_BASE + 0x40, 4)
    assert "unhandled 4-byte write to MMIO address 0xd0000040" in str(info.value)


def test_a_failing_read_handler_names_the_access(
        replay: Callable[[list[tuple[int, int, int, int]]], Replay]) -> None:
    r = replay([(PIO_R, 2, 0x820, 0)])

    def read(offset: int, size: int) -> bytes:
        raise LookupError("no such register")

    r.intf.iorange(0x820, 4, PIO, read=read)
    with pytest.raises(xi.GuestIOError) as info:
        r.machine.run(timeout=30)
    assert (info.value.space, info.value.addr, info.value.length) == ("pio", 0x820, 2)
    assert isinstance(info.value.__cause__, LookupError)


def test_a_handler_that_deassigns_itself_outlives_its_call(
        replay: Callable[[list[tuple[int, int, int, int]]], Replay]) -> None:
    # The bus holds the only reference to the event; the loop must hold its own while the
    # handler runs, since deassign() drops the bus's.
    r = replay([(PIO_W, 1, 0x840, 1), (PIO_W, 1, 0x840, 2), (PIO_W, 1, 0xE9, ord("k"))])
    seen: list[bytes] = []

    def once(ev: xi.XIOEvent, payload: bytes) -> None:
        ev.deassign()
        gc.collect()
        seen.append(payload)
        assert ev.live is False  # still a whole object

    ref = weakref.ref(r.intf.ioevent(0x840, 1, PIO, signal=once))
    assert r.machine.run(timeout=30).reason == "hlt"
    gc.collect()
    assert ref() is None
    assert seen == [b"\x01"]
    assert r.console.getvalue() == b"k"


def test_ctrl_c_during_a_run_reaches_the_caller(guest: Assemble) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread only")
    writes = 0

    def count(ev: xi.XIOEvent, payload: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 100:
            os.kill(os.getpid(), signal.SIGINT)

    with xi.Machine(memory=1 << 20, console=io.BytesIO()) as m:
        m.load_flat(guest("write_forever", PORT=0x860), mode="protected")
        xi.bind(m).ioevent(0x860, 4, PIO, signal=count)
        with pytest.raises(KeyboardInterrupt):
            m.run(timeout=60)
        stopped_at = writes
        assert stopped_at >= 100
        # No vCPU thread was left running behind the caller, and the machine runs again.
        assert all(loop.thread_id is None for loop in m.vcpus)
        assert writes == stopped_at
        assert m.run(timeout=0.2).reason == "timeout"
        assert writes > stopped_at
