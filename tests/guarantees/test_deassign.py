"""deassign() under concurrency: a handler that deassigns, raises or blocks never deadlocks,
and deassign() waits for the handler it removes.

docs/guarantees.md; each test reproduced a defect before its fix."""

from __future__ import annotations

import struct
import threading
import time

import pytest

import xinterface as xi
from tests.conftest import Assemble, finish, needs_kvm, wait_for
from tests.guarantees.helpers import EVENTFD, FLAG, P_PORT, PIO, POSTED, S_PORT

pytestmark = needs_kvm


# --- a poller and a vCPU deassigning each other's events -----------------------------------------


@pytest.mark.parametrize("vcpus", [1, 2])
def test_poller_and_vcpu_deassigning_each_others_events_do_not_deadlock(
        guest: Assemble, vcpus: int) -> None:
    # The POSTED handler, on the poller, deassigns the SYNC event; the SYNC handler, on a vCPU,
    # deassigns the POSTED event. The poller holds the ring while it waits for the vCPU's
    # grace period, so the vCPU must not wait for the ring as if it were busy in a handler.
    def scenario() -> xi.RunResult:
        with xi.Machine(memory=1 << 20, vcpus=vcpus) as m:
            m.load_flat(guest("posted_then_sync", POSTED=P_PORT, SYNC=S_PORT, COUNT=40,
                              DELAY=1000), mode="protected")
            intf = xi.bind(m)
            events: dict[str, xi.XIOEvent] = {}

            def on_posted(ev: xi.XIOEvent, payload: bytes) -> None:
                if threading.current_thread().name == "xinterface-poll":
                    time.sleep(0.002)
                    events["sync"].deassign()

            def on_sync(ev: xi.XIOEvent, payload: bytes) -> None:
                events["posted"].deassign()

            events["posted"] = intf.ioevent(P_PORT, 4, PIO, signal=on_posted, delivery=POSTED)
            events["sync"] = intf.ioevent(S_PORT, 4, PIO, signal=on_sync)
            return m.run(timeout=20, poll=0.0002)

    for _ in range(5):
        assert finish(scenario, 20).reason == "hlt"


# --- deassign() always completes -----------------------------------------------------------------


def test_deassign_completes_when_the_handler_raises_inside_it(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("writes_then_flag", PORT=P_PORT, COUNT=100, FLAG=FLAG, AFTER=5),
                    mode="protected")
        intf = xi.bind(m)
        deassigned = False
        late_calls = 0

        def handler(ev: xi.XIOEvent, payload: bytes) -> None:
            nonlocal late_calls
            if deassigned:
                late_calls += 1
            raise ValueError("handler bug")

        ev = intf.ioevent(P_PORT, 4, PIO, signal=handler, delivery=POSTED)
        results: list[xi.RunResult] = []
        runner = threading.Thread(target=lambda: results.append(m.run(timeout=30)))
        runner.start()
        try:
            # The guest's 100 writes wait in the ring: no exit and no poller drains them.
            assert wait_for(lambda: intf.copy_from(FLAG, 4) == b"\1\0\0\0")
            with pytest.raises(xi.GuestIOError) as info:
                ev.deassign()  # delivers the ring's entries: the first one raises
            deassigned = True
            assert isinstance(info.value.__cause__, ValueError)
            assert info.value.addr == P_PORT and info.value.space == "pio"
            ev.deassign()  # a second call does nothing
            again = intf.ioevent(P_PORT, 4, PIO, delivery=POSTED)  # the port is free
            again.deassign()
            intf.copy_to(FLAG, b"\2")  # the guest writes 5 more times, then halts
        finally:
            runner.join()
    assert late_calls == 0
    assert [r.reason for r in results] == ["hlt"]


# --- deassign() from outside any handler waits for the handler -----------------------------------


def test_deassign_from_the_main_thread_waits_for_a_handler_blocked_in_another_deassign(
        guest: Assemble) -> None:
    # E's handler (SYNC, on the vCPU) deassigns F, whose EVENTFD handler is slow: E's handler
    # blocks there. E.deassign() from the main thread must still wait for E's handler.
    table = 0x100000
    with xi.Machine(memory=4 << 20) as m:
        m.load_flat(guest("replay", mode="long", TABLE=table), mode="long")
        intf = xi.bind(m)
        intf.copy_to(table, struct.pack("<BB6xQQ", 1, 4, 0x5B0, 1)
                     + struct.pack("<BB6xQQ", 1, 4, 0x5B4, 2) + bytes(24))
        f_running, release = threading.Event(), threading.Event()
        e_blocked, e_done = threading.Event(), threading.Event()

        def slow(ev: xi.XIOEvent, payload: bytes) -> None:
            f_running.set()
            release.wait(10)

        f = intf.ioevent(0x5B0, 4, PIO, signal=slow, delivery=EVENTFD)

        def on_e(ev: xi.XIOEvent, payload: bytes) -> None:
            f_running.wait(10)
            e_blocked.set()
            f.deassign()  # waits for slow() to return
            time.sleep(0.3)  # E's handler goes on after that: deassign(E) must wait for it
            e_done.set()

        e = intf.ioevent(0x5B4, 4, PIO, signal=on_e)
        runner = threading.Thread(target=m.run, kwargs={"timeout": 30})
        runner.start()
        try:
            assert e_blocked.wait(10)
            time.sleep(0.05)  # E's handler is inside f.deassign() now
            timer = threading.Timer(1.0, release.set)  # slow() returns a second from now
            timer.start()
            e.deassign()
            assert e_done.is_set()  # E's handler had returned
        finally:
            release.set()
            runner.join()
