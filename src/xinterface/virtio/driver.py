"""The driver's side of virtio, in Python, for testing a device without a guest OS.

:class:`QueueDriver` keeps a split virtqueue in guest RAM (written through the xinterface, as
a guest driver would write it) and :func:`bring_up` runs the initialization of §3.1.1 through
a device's transport calls. Everything it writes is ordinary guest memory: the device under
test reads it exactly as it reads a guest's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from ..interface import XInterface
from .chain import DESC, DESC_SIZE, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from .device import Interrupt, Status, VirtioDevice
from .queue import RING_HEADER, USED_ELEM, ring_sizes

U16 = struct.Struct("<H")
Buffer = tuple[int, int, bool]   # (gpa, length, device-writable)


class QueueDriver:
    """A split virtqueue of ``size`` entries laid out from ``gpa``: the descriptor table,
    then the available ring, then the used ring aligned to ``used_align`` (4, or the legacy
    interface's QueueAlign: §2.7.2)."""

    def __init__(self, intf: XInterface, gpa: int, size: int, *, used_align: int = 4) -> None:
        self.intf = intf
        self.size = size
        desc_len, avail_len, used_len = ring_sizes(size)
        self.desc_addr = gpa
        self.avail_addr = gpa + desc_len
        self.used_addr = -(-(self.avail_addr + avail_len) // used_align) * used_align
        self.end = self.used_addr + used_len
        intf.copy_to(gpa, bytes(self.end - gpa))
        self.avail_idx = 0
        self.last_used = 0
        self._next_desc = 0

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0) -> None:
        self.intf.copy_to(self.desc_addr + i * DESC_SIZE, DESC.pack(addr, length, flags, next))

    def make_available(self, head: int) -> None:
        """Put ``head`` in the available ring, then publish the new ``avail.idx``."""
        slot = self.avail_addr + RING_HEADER + 2 * (self.avail_idx % self.size)
        self.intf.copy_to(slot, U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.intf.copy_to(self.avail_addr + 2, U16.pack(self.avail_idx))

    def post(self, buffers: Sequence[Buffer]) -> int:
        """Chain ``buffers`` in free descriptors (taken in turn) and make the chain available;
        its head."""
        n = len(buffers)
        first = self._next_desc
        indexes = [(first + k) % self.size for k in range(n)]
        self._next_desc = (first + n) % self.size
        for k, (addr, length, writable) in enumerate(buffers):
            flags = (VIRTQ_DESC_F_WRITE if writable else 0) | (
                VIRTQ_DESC_F_NEXT if k + 1 < n else 0)
            self.write_desc(indexes[k], addr, length, flags, indexes[(k + 1) % n])
        self.make_available(indexes[0])
        return indexes[0]

    @property
    def used_idx(self) -> int:
        return int(U16.unpack(self.intf.copy_from(self.used_addr + 2, 2))[0])

    @property
    def used_flags(self) -> int:
        return int(U16.unpack(self.intf.copy_from(self.used_addr, 2))[0])

    @property
    def avail_event(self) -> int:
        """``used->avail_event``, written by the device with VIRTIO_F_EVENT_IDX."""
        return int(U16.unpack(self.intf.copy_from(self.used_addr + RING_HEADER
                                                  + 8 * self.size, 2))[0])

    def used(self) -> list[tuple[int, int]]:
        """The ``(id, len)`` elements the device used since the last call."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            slot = self.used_addr + RING_HEADER + 8 * (self.last_used % self.size)
            ident, length = USED_ELEM.unpack(self.intf.copy_from(slot, 8))
            out.append((ident, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def set_avail_flags(self, flags: int) -> None:
        self.intf.copy_to(self.avail_addr, U16.pack(flags))

    def set_used_event(self, idx: int) -> None:
        self.intf.copy_to(self.avail_addr + RING_HEADER + 2 * self.size, U16.pack(idx))


def bring_up(device: VirtioDevice, intf: XInterface, queues: Sequence[QueueDriver], *,
             features: int | None = None,
             interrupt: Callable[[Interrupt], None] | None = None) -> int:
    """Attach ``device`` and initialise it as a driver does (§3.1.1): ACKNOWLEDGE, DRIVER,
    ``features`` (default: everything offered), FEATURES_OK, the queues, DRIVER_OK. Returns
    the device status, which lacks FEATURES_OK and DRIVER_OK if the device refused."""
    told = interrupt

    def notified(kind: Interrupt, queue: int | None = None, /) -> None:
        if told is not None:
            told(kind)   # one callable for every queue, as a single interrupt line has

    device.connect(intf, notified)
    device.set_status(0)
    device.set_status(Status.ACKNOWLEDGE)
    device.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
    wanted = device.device_features if features is None else features
    for word in range(2):
        device.set_driver_features(word, wanted >> (32 * word) & 0xFFFFFFFF)
    device.set_status(device.status | Status.FEATURES_OK)
    if not device.status & Status.FEATURES_OK:
        return device.status
    for i, q in enumerate(queues):
        vq = device.queues[i]
        vq.size, vq.desc_addr, vq.avail_addr, vq.used_addr = (
            q.size, q.desc_addr, q.avail_addr, q.used_addr)
        device.set_queue_ready(i, True)
    device.set_status(device.status | Status.DRIVER_OK)
    return device.status
