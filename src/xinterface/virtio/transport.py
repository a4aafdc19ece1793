"""What the virtio transports do alike (virtio 1.2 §4.1 PCI, §4.2 MMIO): written once here,
used by :mod:`.mmio` and :mod:`.pci`.

- the 32-bit feature windows a selector picks (§4.1.4.3, §4.2.2): words past the 64 feature
  bits read 0 and take no writes, whatever the selector holds;
- the queue registers: which queue the selector picks, and that a live queue's
  configuration does not change (§4.1.4.3.2, §4.2.3.2);
- the legacy ring layout (§2.7.2): descriptor table, available ring, used ring at the next
  alignment boundary, from one page address;
- the doorbells: one xioevent whose payload is the queue index, or (EVENTFD) one ioeventfd
  per queue with the index as datamatch;
- the interrupt status with the line that follows it;
- register blocks as tables of fields (offset, width, getter, setter), so an access reads or
  writes the fields it touches and nothing else.
"""

from __future__ import annotations

import errno
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..delivery import Delivery
from ..devices.interrupt import InterruptLine
from ..devices.persist import Persistent, State, bad_field, field_int, field_table, nested
from ..errors import XInterfaceError
from ..interface import XInterface, XIOEvent
from .device import Interrupt, VirtioDevice
from .queue import VirtQueue

FEATURE_WORDS = 2   # 64 feature bits (§6): the words a feature selector can reach


def feature_word(features: int, select: int) -> int:
    """Word ``select`` of ``features`` as a 32-bit feature register shows it; 0 past the
    last word."""
    if not 0 <= select < FEATURE_WORDS:
        return 0
    return features >> (32 * select) & 0xFFFFFFFF


def set_driver_feature_word(device: VirtioDevice, select: int, value: int) -> None:
    """The driver wrote its feature word ``select``; a word past the last does not exist
    (the write goes nowhere, as a register that is not there)."""
    if 0 <= select < FEATURE_WORDS:
        device.set_driver_features(select, value)
    else:
        device.stats["feature_write_dropped"] += 1


def selected_queue(device: VirtioDevice, select: int) -> VirtQueue | None:
    """The queue ``select`` names, or None if there is no such queue."""
    queues = device.queues
    return queues[select] if 0 <= select < len(queues) else None


def configurable_queue(device: VirtioDevice, select: int,
                       stats: Counter[str]) -> VirtQueue | None:
    """The queue ``select`` names if the driver may configure it now; None (counted in
    ``stats``) for a queue that does not exist or is live."""
    q = selected_queue(device, select)
    if q is None:
        stats["bad_queue_select"] += 1
    elif q.ready:
        stats["live_queue_write"] += 1
        return None
    return q


def place_legacy_queue(device: VirtioDevice, select: int, desc_addr: int, align: int,
                       stats: Counter[str], *, size: int | None = None) -> bool:
    """A legacy driver's queue address (QueueAddress, QueuePFN): 0 stops the queue, else the
    queue (of ``size`` entries, if given) is laid out from ``desc_addr`` (§2.7.2: the
    available ring right after the descriptor table, the used ring at the next ``align``
    boundary) and made ready. Whether the write was taken."""
    if desc_addr == 0:
        if selected_queue(device, select) is None:
            stats["bad_queue_select"] += 1
            return False
        device.set_queue_ready(select, False)
        return True
    q = configurable_queue(device, select, stats)
    if q is None:
        return False
    if size is not None:
        q.size = size
    align = align if align > 0 else 4096
    q.desc_addr = desc_addr
    q.avail_addr = desc_addr + 16 * q.size
    used = q.avail_addr + 6 + 2 * q.size
    q.used_addr = (used + align - 1) // align * align
    device.set_queue_ready(select, True)
    return True


def register_doorbells(intf: XInterface, device: VirtioDevice, addr: int, width: int,
                       flags: int, delivery: Delivery, stats: Counter[str]) -> list[XIOEvent]:
    """The doorbell of every queue at ``addr``: one xioevent whose payload is the queue
    index (without VIRTIO_F_NOTIFICATION_DATA the driver writes the index: §4.1.4.4.1,
    §4.2.2), or with EVENTFD one ioeventfd per queue, its index as datamatch; a device
    with eventfds of its own (:meth:`VirtioDevice.doorbell_eventfd`) gets them as the
    ioeventfds of its queues, whatever ``delivery`` says. On failure
    those registered are deassigned and the error raised."""
    events: list[XIOEvent] = []
    own = [device.doorbell_eventfd(q.index) for q in device.queues]
    try:
        if any(fd is not None for fd in own):
            # The device's own eventfds: KVM signals them, nobody here reads them.
            for q, fd in zip(device.queues, own, strict=True):
                if fd is not None:
                    events.append(intf.ioevent(addr, width, flags, delivery=Delivery.EVENTFD,
                                               datamatch=q.index, eventfd=fd))
        elif delivery is Delivery.EVENTFD:
            for q in device.queues:
                events.append(intf.ioevent(addr, width, flags, delivery=Delivery.EVENTFD,
                                           datamatch=q.index,
                                           signal=_queue_notifier(device, q.index, stats)))
        else:
            events.append(intf.ioevent(addr, width, flags, delivery=delivery,
                                       signal=_payload_notifier(device, stats)))
    except BaseException:
        for event in events:
            event.deassign()
        raise
    return events


def _queue_notifier(device: VirtioDevice, index: int,
                    stats: Counter[str]) -> Callable[[XIOEvent, bytes], None]:
    def ring(ev: XIOEvent, payload: bytes) -> None:
        stats["doorbell"] += 1
        device.notify(index)
    return ring


def _payload_notifier(device: VirtioDevice,
                      stats: Counter[str]) -> Callable[[XIOEvent, bytes], None]:
    def ring(ev: XIOEvent, payload: bytes) -> None:
        stats["doorbell"] += 1
        device.notify(int.from_bytes(payload, "little"))
    return ring


class InterruptStatus:
    """The interrupt status bits (virtio-mmio's InterruptStatus, virtio-pci's ISR status)
    and the line that follows them: its level is "some bit set", changed under this lock so
    the line's changes keep the order of the status's; each interrupt is also one
    :meth:`~xinterface.devices.interrupt.InterruptLine.trigger` (an edge per interrupt, so
    an edge-triggered line misses none)."""

    def __init__(self, line: InterruptLine | None) -> None:
        self.line = line
        self.value = 0
        self.raised = 0
        self._lock = threading.Lock()

    def raise_(self, kind: Interrupt) -> None:
        """The device interrupts for ``kind``."""
        with self._lock:
            old = self.value
            self.value = old | int(kind)
            self.raised += 1
            if self.line is not None and not old and self.value:
                self.line.set_level(True)
        if self.line is not None:
            self.line.trigger()

    def restore(self, value: int) -> None:
        """The status a snapshot saved, the line's level following it."""
        with self._lock:
            self.value = value
            if self.line is not None:
                self.line.set_level(bool(value))

    def clear(self, bits: int = -1) -> int:
        """Clear ``bits`` (all by default); the status before."""
        with self._lock:
            old = self.value
            self.value = old & ~bits
            if self.line is not None and old and not self.value:
                self.line.set_level(False)
        return old


def save_device(device: VirtioDevice, what: str) -> State:
    """A transport's device's own save(); ``EOPNOTSUPP`` naming it if it has none (one
    served by a vhost-user backend keeps its state there)."""
    if not isinstance(device, Persistent):
        raise XInterfaceError(errno.EOPNOTSUPP, f"cannot snapshot: device {device.name} "
                              f"({what}) has no save()/load()", argument="device",
                              value=device.name)
    return device.save()


def load_device(device: VirtioDevice, state: State, what: str) -> None:
    """The device's state (its own load()), then the features it offers checked against
    the saved ones."""
    if not isinstance(device, Persistent):
        raise XInterfaceError(errno.EOPNOTSUPP, f"cannot restore: device {device.name} "
                              f"({what}) has no save()/load()", argument="device",
                              value=device.name)
    with nested("device"):
        device.load(field_table(state, "device"))
    try:
        check_offered(device, state)
    except BaseException:
        device.reset()   # nothing half loaded
        raise


def check_offered(device: VirtioDevice, state: State) -> None:
    """The features the saved device offered are the ones this one offers (the same
    device type and options): ``EINVAL`` naming ``device_features`` otherwise."""
    offered = field_int(state, "device_features", 0, (1 << 64) - 1)
    if offered != device.device_features:
        raise bad_field("device_features", offered, f"differ from what {device.name} offers "
                        f"({device.device_features:#x}): another device or options")


class Field(NamedTuple):
    """One register of a block: ``size`` bytes at ``offset``; ``get()`` its value (what
    does not fit in ``size`` bytes is cut off, as hardware gives only the field's bits),
    ``put(value)`` a write of the whole field, or None for a read-only one."""

    offset: int
    size: int
    get: Callable[[], int]
    put: Callable[[int], None] | None = None


class RegisterTable:
    """A block of :class:`Field` registers, ``span`` bytes; bytes of no field read 0."""

    def __init__(self, fields: Sequence[Field], span: int) -> None:
        self.fields = sorted(fields, key=lambda f: f.offset)
        self.span = span
        self._at: list[Field | None] = [None] * span
        for field in self.fields:
            for i in range(field.offset, field.offset + field.size):
                if self._at[i] is not None:
                    raise ValueError(f"fields overlap at {i:#x}")
                self._at[i] = field

    def field(self, offset: int) -> Field | None:
        """The field that holds byte ``offset``."""
        return self._at[offset] if 0 <= offset < self.span else None

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``: each field touched is read once."""
        out = bytearray(size)
        at = offset
        while at < offset + size:
            field = self.field(at)
            if field is None:
                at += 1
                continue
            value = (field.get() & ((1 << 8 * field.size) - 1)).to_bytes(field.size, "little")
            start = max(offset, field.offset)
            end = min(offset + size, field.offset + field.size)
            out[start - offset : end - offset] = value[start - field.offset : end - field.offset]
            at = end
        return bytes(out)

    def write(self, offset: int, data: bytes, *, partial: bool) -> bool:
        """A write inside one field: the field's new value goes to its setter. ``partial``:
        a write of part of the field (the rest keeps its value) is taken; else only a
        write of the whole field is. False if the write was not taken (no field, across
        fields, the wrong width, a read-only field)."""
        field = self.field(offset)
        if field is None or offset + len(data) > field.offset + field.size:
            return False
        if not partial and (offset != field.offset or len(data) != field.size):
            return False
        if field.put is None:
            return False
        if len(data) == field.size:
            value = int.from_bytes(data, "little")
        else:
            mask = (1 << 8 * field.size) - 1
            image = bytearray((field.get() & mask).to_bytes(field.size, "little"))
            image[offset - field.offset : offset - field.offset + len(data)] = data
            value = int.from_bytes(image, "little")
        field.put(value)
        return True
