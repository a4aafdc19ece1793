"""virtio doorbells costs: one virtio-mmio queue (of a virtio-rng), the same guest, each
QueueNotify delivery mode (SYNC xioevent, POSTED ring, EVENTFD ioeventfd with datamatch)."""

from __future__ import annotations

import time
from pathlib import Path

from ..delivery import Delivery
from ..interface import XIOEvent, XIOEventFd, XIOEventFlags, bind
from ..loader import assemble
from ..runner.machine import Machine
from ..virtio import VirtioMmio, VirtioRng

GUEST = Path(__file__).parent / "guests" / "virtio_notify.S"
GPA = 0x1000
BASE = 0xD000_0000
STAMP_PORT = 0x3F0
LAYOUT = {"DESC": 0x10000, "AVAIL": 0x11000, "USED": 0x12000, "BUFFER": 0x13000, "QSIZE": 8,
          "BASE": BASE, "STAMP": STAMP_PORT}


def notify_cost(count: int, delivery: Delivery = Delivery.SYNC, *, request: bool = False,
                poll: float | None = None) -> float:
    """ns per doorbell, from the guest's start mark (after the device set-up) to the last
    doorbell served. ``request``: each doorbell carries a new buffer and the guest waits for
    it to be used (a round trip); otherwise the doorbells ring an empty queue."""
    image = assemble(GUEST, gpa=GPA, defines={**LAYOUT, "COUNT": count,
                                              "REQUEST": int(request)})
    start = 0

    def stamp(ev: XIOEvent, payload: bytes) -> None:
        nonlocal start
        start = time.perf_counter_ns()

    with Machine(memory=2 << 20, debug_ports=False) as machine:
        machine.load_flat(image, gpa=GPA, mode="protected")
        intf = bind(machine)
        intf.ioevent(STAMP_PORT, 4, XIOEventFlags.PIO, signal=stamp)
        rng = VirtioRng(queue_size=8)
        mmio = VirtioMmio(rng, BASE, doorbells=delivery)
        mmio.attach(intf)
        result = machine.run(timeout=600, poll=poll)
        fds = [e for e in mmio.doorbells if isinstance(e, XIOEventFd)]
        while fds and sum(e.count for e in fds) < count:
            time.sleep(0.0001)   # the event-loop thread is still reading the eventfd
        elapsed = time.perf_counter_ns() - start
        served = mmio.stats["doorbell"]
        mmio.detach()
    if result.reason != "hlt" or not start:
        raise RuntimeError(f"virtio doorbells guest ended with {result.reason!r}")
    if delivery is not Delivery.EVENTFD and served != count:
        raise RuntimeError(f"{served} of {count} doorbells reached the device")
    return elapsed / count
