"""The Python exit loop on the floor's guest: ns per 1-byte PIO write that exits to userspace.

Three variants of one guest loop: nobody claims the port (the bare exit loop), a SYNC xioevent
with a trivial handler claims it (what a client pays), and the same with N other events on the
bus (the seed's io-bus scaling complaint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..loader import assemble
from ..machine import Machine
from ..xinterface import XIOEvent, XIOEventFlags, bind

GUESTS = Path(__file__).parent / "guests"
BENCH_PORT = 0x3FF
GPA = 0x1000


@dataclass(frozen=True)
class LoopResult:
    count: int
    ns_total: int
    ns_per_write: float
    exits: int
    handled: int


def pio_loop_image(count: int, port: int = BENCH_PORT) -> bytes:
    return assemble(GUESTS / "pio_loop.S", gpa=GPA, bits=32,
                    defines={"COUNT": count, "PORT": port})


def _filler_events(n: int) -> list[tuple[int, int]]:
    """``n`` distinct (port, length) pairs on the PIO bus, none of them the bench port's."""
    out: list[tuple[int, int]] = []
    port = 0
    while len(out) < n:
        if port != BENCH_PORT:
            out.extend((port, length) for length in (1, 2, 4, 8))
        port += 1
    return out[:n]


def run_pio_loop(count: int, *, event: bool = False, registered: int = 0) -> LoopResult:
    """Time ``Machine.run()`` over ``count`` writes; everything is set up before the clock.

    ``event``: a SYNC xioevent with a counting handler claims the port. ``registered``:
    the total number of events on the PIO bus (fillers plus the bench event).
    """
    image = pio_loop_image(count)
    handled = 0

    def signal(ev: XIOEvent, payload: bytes) -> None:
        nonlocal handled
        handled += 1

    with Machine(memory=2 << 20, debug_ports=False) as machine:
        machine.load_flat(image, gpa=GPA, mode="protected")
        intf = bind(machine)
        if event or registered:
            intf.ioevent(BENCH_PORT, 1, XIOEventFlags.PIO, signal=signal)
            for port, length in _filler_events(max(registered - 1, 0)):
                intf.ioevent(port, length, XIOEventFlags.PIO)
        start = time.perf_counter_ns()
        result = machine.run()
        elapsed = time.perf_counter_ns() - start
    if result.reason != "hlt":
        raise RuntimeError(f"benchmark guest ended with {result.reason!r}, not hlt")
    return LoopResult(count, elapsed, elapsed / count, result.exits["io"], handled)
