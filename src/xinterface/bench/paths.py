"""One sample of each figure: ns per guest write on each delivery path, and latency."""

from __future__ import annotations

import time
from pathlib import Path

from ..delivery import Delivery
from ..interface import XInterface, XIOEvent, XIOEventFd, XIOEventFlags, bind
from ..loader import assemble
from ..runner.machine import Machine

GUESTS = Path(__file__).parent / "guests"
GPA = 0x1000
BENCH_PORT = 0x3FF
BENCH_MMIO = 0xD0000000
STAMP_PORT, TARGET_PORT, ACK = 0x3F0, 0x3F4, 0x8000


def _image(count: int, size: int, mmio: bool) -> bytes:
    return assemble(GUESTS / "write_loop.S", gpa=GPA, bits=64 if size == 8 else 32,
                    defines={"COUNT": count, "SIZE": size, "MMIO": int(mmio),
                             "ADDR": BENCH_MMIO if mmio else BENCH_PORT})


def _filler(intf: XInterface, n: int) -> None:
    """``n`` events on the PIO bus besides the measured one (ports x lengths, not 0x3ff)."""
    port = 0
    while n > 0:
        if port != BENCH_PORT:
            for length in (1, 2, 4, 8)[: min(n, 4)]:
                intf.ioevent(port, length, XIOEventFlags.PIO)
                n -= 1
        port += 1


def write_cost(count: int, *, size: int = 1, mmio: bool = False,
               delivery: Delivery | None = Delivery.SYNC, registered: int = 1,
               poll: float | None = None) -> float:
    """ns per guest write, from ``run()`` start to its return (posted writes all delivered).

    ``delivery=None``: nobody claims the address (the bare exit loop).
    """
    handled = 0

    def signal(ev: XIOEvent, payload: bytes) -> None:
        nonlocal handled
        handled += 1

    with Machine(memory=2 << 20, debug_ports=False) as machine:
        machine.load_flat(_image(count, size, mmio), gpa=GPA,
                          mode="long" if size == 8 else "protected")
        intf = bind(machine)
        ev = None
        if delivery is not None:
            ev = intf.ioevent(BENCH_MMIO if mmio else BENCH_PORT, size,
                              0 if mmio else XIOEventFlags.PIO, signal=signal,
                              delivery=delivery)
            _filler(intf, registered - 1)
        start = time.perf_counter_ns()
        result = machine.run(poll=poll)
        if isinstance(ev, XIOEventFd):
            # Writes are counted when the event-loop thread has read the eventfd.
            while ev.count < count:
                time.sleep(0.0001)
        elapsed = time.perf_counter_ns() - start
    if result.reason != "hlt":
        raise RuntimeError(f"benchmark guest ended with {result.reason!r}")
    if delivery in (Delivery.SYNC, Delivery.POSTED) and handled != count:
        raise RuntimeError(f"{handled} of {count} writes reached the handler")
    return elapsed / count


def latency(rounds: int, delivery: Delivery = Delivery.EVENTFD,
            poll: float | None = None) -> float:
    """Median ns from a guest write to its handler call, on the ``delivery`` path.

    The guest makes a SYNC write (its handler notes the time) right before the write under
    test, then spins until that write's handler acknowledges it in memory. POSTED writes are
    delivered by the poller (``poll`` seconds), since the spinning guest does not exit.
    """
    stamps: dict[int, int] = {}
    delays: list[int] = []
    with Machine(memory=2 << 20, debug_ports=False) as machine:
        machine.load_flat(assemble(GUESTS / "latency.S", gpa=GPA, defines={
            "COUNT": rounds, "STAMP": STAMP_PORT, "TARGET": TARGET_PORT, "ACK": ACK}),
            gpa=GPA, mode="protected")
        intf = bind(machine)
        last = 0

        def stamp(ev: XIOEvent, payload: bytes) -> None:
            nonlocal last
            last = int.from_bytes(payload, "little")
            stamps[last] = time.perf_counter_ns()

        def target(ev: XIOEvent, payload: bytes) -> None:
            delays.append(time.perf_counter_ns() - stamps[last])
            intf.copy_to(ACK, last.to_bytes(4, "little"))

        intf.ioevent(STAMP_PORT, 4, XIOEventFlags.PIO, signal=stamp)
        intf.ioevent(TARGET_PORT, 4, XIOEventFlags.PIO, signal=target, delivery=delivery)
        result = machine.run(timeout=120, poll=poll)
    if result.reason != "hlt" or len(delays) != rounds:
        raise RuntimeError(f"latency guest: {result.reason}, {len(delays)} of {rounds} rounds")
    delays.sort()
    return float(delays[len(delays) // 2])


def dispatch_cost(registered: int, number: int) -> float:
    """ns per ``IoBus.write`` that hits an event, with ``registered`` events on the bus: the
    dispatch alone, without the ~10 µs exit around it that hides it in ``bus.events.*``."""
    with Machine(memory=1 << 20, debug_ports=False) as machine:
        intf = bind(machine)
        intf.ioevent(BENCH_PORT, 1, XIOEventFlags.PIO, signal=lambda ev, payload: None)
        _filler(intf, registered - 1)
        write = machine.pio_bus.write
        payload = b"A"
        start = time.perf_counter_ns()
        for _ in range(number):
            write(BENCH_PORT, payload)
        return (time.perf_counter_ns() - start) / number
