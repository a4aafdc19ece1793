"""What the virtio tests share: an echo device, a machine with a device brought up on it by
a Python driver writing real guest RAM, and a check that nothing was written where it must
not be."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import xinterface as xi
from xinterface.devices.interrupt import InterruptLine
from xinterface.virtio import Interrupt, VirtioDevice, VirtQueue
from xinterface.virtio.driver import QueueDriver, bring_up

RINGS = 0x10000     # the queue's rings
BUF = 0x20000       # buffers from here on
MEMORY = 2 << 20


class LineLog(InterruptLine):
    """An interrupt line that keeps what a device drove on it: each level it set, and a 1
    for each trigger. No interrupt controller is behind it: a test reads what the device
    asked for (the guest tests take real lines)."""

    def __init__(self) -> None:
        self.levels: list[bool] = []
        self.edges: list[int] = []

    def set_level(self, level: bool) -> None:
        self.levels.append(level)

    def trigger(self) -> None:
        self.edges.append(1)


class Echo(VirtioDevice):
    """Copies each request's device-readable bytes to its device-writable buffers."""

    device_id = 63

    def __init__(self, queue_size: int = 8, iothread: bool = False) -> None:
        super().__init__(queue_sizes=(queue_size,), iothread=iothread)
        self.seen: list[tuple[bytes, int]] = []
        self.threads: set[str] = set()

    def handle(self, queue: VirtQueue) -> None:
        self.threads.add(threading.current_thread().name)
        for chain in queue:
            data = chain.read()
            self.seen.append((data, chain.writable_len))
            queue.add_used(chain, chain.write(data))


@dataclass
class Rig:
    machine: xi.Machine
    intf: xi.XInterface
    device: VirtioDevice
    queue: QueueDriver
    interrupts: list[Interrupt] = field(default_factory=list)
    status: int = 0

    def snapshot(self) -> bytes:
        return self.intf.copy_from(0, MEMORY)

    def wait_used(self, n: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Used elements until there are ``n`` (a device on its own thread)."""
        got: list[tuple[int, int]] = []
        end = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < end:
            got += self.queue.used()
            time.sleep(0.001)
        return got


@contextmanager
def rig(device: VirtioDevice | None = None, *, size: int = 8, features: int | None = None,
        memory: int | list[tuple[int, int]] = MEMORY) -> Iterator[Rig]:
    """A machine (never run: the test is the driver) with ``device`` brought up on it."""
    with xi.Machine(memory=memory) as m:
        intf = xi.bind(m)
        dev = device if device is not None else Echo(size)
        q = QueueDriver(intf, RINGS, size)
        r = Rig(m, intf, dev, q)
        r.status = bring_up(dev, intf, [q], features=features, interrupt=r.interrupts.append)
        try:
            yield r
        finally:
            dev.disconnect()


def changes(before: bytes, after: bytes) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges where two snapshots differ (4 KiB pages compared first)."""
    out: list[tuple[int, int]] = []
    for page in range(0, len(before), 4096):
        if before[page:page + 4096] == after[page:page + 4096]:
            continue
        for i in range(page, min(page + 4096, len(before))):
            if before[i] != after[i]:
                if out and out[-1][1] == i:
                    out[-1] = (out[-1][0], i + 1)
                else:
                    out.append((i, i + 1))
    return out
