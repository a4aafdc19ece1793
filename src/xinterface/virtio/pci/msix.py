"""MSI-X of a virtio-pci function (PCI Local Bus 3.0 §6.8.2; virtio 1.2 §4.1.4.3, §4.1.5.1.2).

The capability (ID 0x11) says how many vectors the table has and where the table and the
Pending Bit Array (PBA) sit: both in a BAR of their own (:data:`MSIX_BAR`, 4 KiB: the table
at 0, the PBA at 0x800), as QEMU lays out its virtio-pci functions. Message Control's
Enable and Function Mask bits are the driver's; so is each entry's address, data and
Vector Control mask bit. An entry is masked after reset (§6.8.2.9).

Each vector is a GSI of the VM's routing table (:class:`~xinterface.devices.msi.MsiRoutes`)
with an irqfd on it: a vector fires with one eventfd write and no exit. The route follows
the entry: it is written when the vector becomes deliverable (MSI-X on, the function and
the entry unmasked) and when the driver changes the address or data of a deliverable one.
A vector that fires while masked sets its pending bit instead and fires on unmask. An
address outside the local APICs' window would be a plain memory write on hardware; such a
vector routes nowhere (counted in ``stats["unrouted"]``).

A queue whose used buffer notifications another process signals (a vhost-user backend's
call eventfd, :meth:`Msix.add_source`) gets that eventfd bound as an irqfd on its vector's
GSI while MSI-X is on and the queue has a vector: nothing in this process reads it. While
the vector is masked the irqfd is unbound, so the eventfd keeps the count (the vector's
pending bit) and KVM injects it when the irqfd is bound again at unmask.

The table takes aligned 4- and 8-byte accesses (§6.8.2: other accesses are undefined):
another size or a misaligned one reads all-ones and writes nothing, and is counted. The PBA
is read-only. :meth:`Msix.save` and :meth:`Msix.load` carry the driver's state.
"""

from __future__ import annotations

import errno
import select
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from ...devices.msi import Message, MsiRoutes, is_apic_message
from ...errors import XInterfaceError
from ...interface import XInterface, XIrqfd
from .layout import VIRTIO_MSI_NO_VECTOR

MSIX_CAP_ID = 0x11
MSIX_BAR = 1
MSIX_BAR_SIZE = 0x1000
TABLE_OFFSET = 0x000
PBA_OFFSET = 0x800
ENTRY_SIZE = 16
MAX_VECTORS = (PBA_OFFSET - TABLE_OFFSET) // ENTRY_SIZE
# In the capability, after its ID and next pointer: Message Control, Table and PBA
# offset/BIR (the BAR index in bits 2:0).
CAP_CONTROL = 2
CAP_LENGTH = 12
CONTROL_ENABLE = 1 << 15
CONTROL_FUNCTION_MASK = 1 << 14
CONTROL_WRITABLE = CONTROL_ENABLE | CONTROL_FUNCTION_MASK
# In an entry: message address (low, high), data, vector control.
ENTRY_ADDRESS_LO, ENTRY_ADDRESS_HI, ENTRY_DATA, ENTRY_CONTROL = 0, 4, 8, 12
VECTOR_MASKED = 1

OnDirect = Callable[[int, bool], None]
T = TypeVar("T")


class Msix:
    """The MSI-X state of one function with ``vectors`` table entries and ``queues``
    virtqueues; the virtio vector numbers the driver assigned (``config_vector``,
    ``queue_vectors``) are kept here too. :meth:`install` adds the capability to a
    function's configuration space; :meth:`attach` gives each vector its GSI and irqfd."""

    def __init__(self, vectors: int, queues: int) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X takes 1 to {MAX_VECTORS} vectors here, not {vectors}")
        self.vectors = vectors
        self.table = bytearray(ENTRY_SIZE * vectors)
        for v in range(vectors):
            self.table[v * ENTRY_SIZE + ENTRY_CONTROL] = VECTOR_MASKED
        self.pending = 0
        self.enabled = False
        self.function_mask = False
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * queues
        self.stats: Counter[str] = Counter()
        self.cap = -1
        self._config: bytearray | None = None
        self._lock = threading.RLock()
        self._routes: MsiRoutes | None = None
        self._intf: XInterface | None = None
        self._gsis: list[int] = []
        self._irqfds: list[XIrqfd] = []
        self._sources: dict[int, int] = {}          # queue -> its call eventfd
        self._bound: dict[int, XIrqfd] = {}         # queue -> its eventfd as an irqfd now
        self._direct: dict[int, bool] = {}
        self.on_direct: OnDirect | None = None      # (queue, KVM takes its eventfd)
        self.on_enable: Callable[[], None] | None = None

    # --- set-up -----------------------------------------------------------------------------
    def capability(self) -> bytes:
        """The capability's bytes after its ID and next pointer."""
        return struct.pack("<HII", self.vectors - 1, TABLE_OFFSET | MSIX_BAR,
                           PBA_OFFSET | MSIX_BAR)

    def install(self, config: bytearray, cap: int) -> None:
        """The capability was put at ``cap`` in ``config`` (the function's space), whose
        Message Control this object keeps from now on."""
        self._config = config
        self.cap = cap
        self._show_control()

    def attach(self, intf: XInterface, routes: MsiRoutes) -> None:
        """A GSI and an irqfd for every vector. All of them, or none and the error."""
        gsis = [routes.allocate() for _ in range(self.vectors)]
        irqfds: list[XIrqfd] = []
        try:
            for gsi in gsis:
                irqfds.append(intf.irqfd(gsi))
        except BaseException:
            for irqfd in irqfds:
                irqfd.deassign()
            raise
        with self._lock:
            self._intf, self._routes = intf, routes
            self._gsis, self._irqfds = gsis, irqfds
            self._refresh()

    def detach(self) -> None:
        """Unbind every irqfd (the sources' eventfds go back to their owner)."""
        with self._lock:
            for queue, irqfd in self._bound.items():
                irqfd.deassign()
                self._tell_direct(queue, False)
            self._bound.clear()
            for irqfd in self._irqfds:
                irqfd.deassign()
            self._irqfds = []
            self._intf = None

    def add_source(self, queue: int, eventfd: int) -> None:
        """Queue ``queue``'s used buffer notifications come as writes to ``eventfd`` from
        another process: bind it to the queue's vector whenever that can be done."""
        with self._lock:
            self._sources[queue] = eventfd
            self._refresh()

    def gsi(self, vector: int) -> int | None:
        """The GSI of ``vector`` (None before :meth:`attach` or past the table)."""
        return self._gsis[vector] if 0 <= vector < len(self._gsis) else None

    # --- the driver's side: configuration space ---------------------------------------------
    @property
    def control(self) -> int:
        return ((self.vectors - 1) | (CONTROL_ENABLE if self.enabled else 0)
                | (CONTROL_FUNCTION_MASK if self.function_mask else 0))

    def _show_control(self) -> None:
        if self._config is not None:
            struct.pack_into("<H", self._config, self.cap + CAP_CONTROL, self.control)

    def owns(self, offset: int) -> bool:
        return self.cap >= 0 and self.cap <= offset < self.cap + CAP_LENGTH

    def config_write(self, offset: int, data: bytes) -> None:
        """A write in the capability: only Enable and Function Mask change."""
        control = self.cap + CAP_CONTROL
        if offset >= control + 2 or offset + len(data) <= control:
            return
        image = bytearray(struct.pack("<H", self.control))
        for i, byte in enumerate(data):
            if 0 <= offset + i - control < 2:
                image[offset + i - control] = byte
        value = int.from_bytes(image, "little")
        with self._lock:
            was = self.enabled
            self.enabled = bool(value & CONTROL_ENABLE)
            self.function_mask = bool(value & CONTROL_FUNCTION_MASK)
            self._show_control()
            self._refresh()
        if was != self.enabled and self.on_enable is not None:
            self.on_enable()

    # --- the driver's side: the virtio vector numbers ---------------------------------------
    def _valid(self, vector: int) -> int:
        # §4.1.5.1.2: a vector the device cannot map reads back VIRTIO_MSI_NO_VECTOR.
        if 0 <= vector < self.vectors:
            return vector
        self.stats["vector_refused"] += vector != VIRTIO_MSI_NO_VECTOR
        return VIRTIO_MSI_NO_VECTOR

    def set_config_vector(self, vector: int) -> None:
        with self._lock:
            self.config_vector = self._valid(vector)

    def queue_vector(self, queue: int) -> int:
        vectors = self.queue_vectors
        return vectors[queue] if 0 <= queue < len(vectors) else VIRTIO_MSI_NO_VECTOR

    def set_queue_vector(self, queue: int, vector: int) -> None:
        with self._lock:
            if not 0 <= queue < len(self.queue_vectors):
                self.stats["bad_queue_select"] += 1
                return
            self.queue_vectors[queue] = self._valid(vector)
            self._refresh()

    def reset_vectors(self) -> None:
        """A device reset: no vector assigned (the table is the function's and stays)."""
        with self._lock:
            self.config_vector = VIRTIO_MSI_NO_VECTOR
            self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.queue_vectors)
            self._refresh()

    # --- the driver's side: the table and the PBA -------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        """A read of the MSI-X BAR (the table, then the PBA)."""
        if size not in (4, 8) or offset % size:
            self.stats["bad_access"] += 1
            return b"\xff" * size
        with self._lock:
            if TABLE_OFFSET <= offset < TABLE_OFFSET + len(self.table):
                at = offset - TABLE_OFFSET
                return bytes(self.table[at : at + size]).ljust(size, b"\0")
            if offset >= PBA_OFFSET:
                bits = self._pending_bits() >> 8 * (offset - PBA_OFFSET)
                return (bits & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        """A write of the MSI-X BAR: table entries take it, the PBA does not."""
        size = len(data)
        if size not in (4, 8) or offset % size:
            self.stats["bad_access"] += 1
            return
        if not TABLE_OFFSET <= offset < TABLE_OFFSET + len(self.table):
            self.stats["write_outside_table"] += 1   # the PBA is read-only
            return
        with self._lock:
            for i in range(0, size, 4):
                at = offset - TABLE_OFFSET + i
                if at >= len(self.table):
                    break
                value = int.from_bytes(data[i : i + 4], "little")
                if at % ENTRY_SIZE == ENTRY_CONTROL:
                    value &= VECTOR_MASKED      # the other bits are reserved, read 0
                struct.pack_into("<I", self.table, at, value)
            self._refresh()

    def masked(self, vector: int) -> bool:
        return bool(self.function_mask
                    or self.table[vector * ENTRY_SIZE + ENTRY_CONTROL] & VECTOR_MASKED)

    def message(self, vector: int) -> Message:
        return struct.unpack_from("<III", self.table, vector * ENTRY_SIZE)

    def _pending_bits(self) -> int:
        bits = self.pending
        for queue, eventfd in self._sources.items():
            vector = self.queue_vector(queue)
            if self._direct.get(queue) and queue not in self._bound and _readable(eventfd):
                bits |= 1 << vector
        return bits

    # --- the device's side ------------------------------------------------------------------
    def fire(self, vector: int) -> bool:
        """Signal ``vector``; False if MSI-X is off (the caller raises INTx instead). A
        vector out of the table (VIRTIO_MSI_NO_VECTOR) signals nothing (§4.1.5.1.2); a
        masked one sets its pending bit."""
        with self._lock:
            if not self.enabled:
                return False
            if not 0 <= vector < self.vectors:
                self.stats["no_vector"] += 1
                return True
            if self.masked(vector) or not self._irqfds:
                self.pending |= 1 << vector
                self.stats["pended"] += 1
                return True
            self._send(vector)
        return True

    def _send(self, vector: int) -> None:
        routes = self._routes
        if routes is None or routes.message(self._gsis[vector]) is None:
            self.stats["unrouted"] += 1
            return
        self.stats["fired"] += 1
        self._irqfds[vector].trigger()

    # --- keeping KVM in step ----------------------------------------------------------------
    def _deliverable(self, vector: int) -> bool:
        return self.enabled and 0 <= vector < self.vectors and not self.masked(vector)

    def _refresh(self) -> None:
        """Routes, pending deliveries and the sources' irqfds after any change (under the
        lock)."""
        routes = self._routes
        if routes is None or not self._irqfds:
            return
        for vector in range(self.vectors):
            if not self._deliverable(vector):
                continue
            lo, hi, data = self.message(vector)
            try:
                routes.set(self._gsis[vector],
                           (lo, hi, data) if is_apic_message(lo, hi) else None)
            except XInterfaceError:
                # KVM refused the table (out of memory, the VM closing): the guest's write
                # stands, the vector keeps its old route; the VMM goes on.
                self.stats["route_failed"] += 1
            if self.pending >> vector & 1:
                self.pending &= ~(1 << vector)
                self._send(vector)
        for queue, eventfd in self._sources.items():
            vector = self.queue_vector(queue)
            direct = self.enabled and vector != VIRTIO_MSI_NO_VECTOR
            want = self._gsis[vector] if direct and self._deliverable(vector) else None
            bound = self._bound.get(queue)
            if bound is not None and bound.gsi != want:
                bound.deassign()
                del self._bound[queue]
                bound = None
            if want is not None and bound is None and self._intf is not None:
                try:
                    self._bound[queue] = self._intf.irqfd(want, eventfd=eventfd)
                except XInterfaceError:
                    # The eventfd is gone (its device closed): nothing left to bind.
                    self.stats["bind_failed"] += 1
                    direct = False
            self._tell_direct(queue, direct)

    def _tell_direct(self, queue: int, direct: bool) -> None:
        if self._direct.get(queue, False) != direct:
            self._direct[queue] = direct
            if self.on_direct is not None:
                self.on_direct(queue, direct)

    # --- snapshots --------------------------------------------------------------------------
    def save(self) -> dict[str, object]:
        """The driver's MSI-X state: Message Control's bits, the table, the pending bits
        (a masked source's count stays in its eventfd) and the vector numbers."""
        with self._lock:
            return {"enabled": self.enabled, "function_mask": self.function_mask,
                    "table": self.table.hex(), "pending": self.pending,
                    "config_vector": self.config_vector,
                    "queue_vectors": list(self.queue_vectors)}

    def load(self, state: Mapping[str, object]) -> None:
        """What :meth:`save` gave, checked first (a snapshot file is untrusted): a field
        of the wrong type or size is ``XInterfaceError(EINVAL)`` and nothing changes."""
        table = _field(state, "table", str)
        try:
            image = bytes.fromhex(table)
        except ValueError:
            image = b""
        if len(image) != len(self.table):
            raise _bad("table", len(table))
        pending = _field(state, "pending", int)
        if not 0 <= pending < 1 << self.vectors:
            raise _bad("pending", pending)
        vectors = _field(state, "queue_vectors", list)
        if len(vectors) != len(self.queue_vectors) or not all(
                type(v) is int for v in vectors):
            raise _bad("queue_vectors", vectors)
        config_vector = _field(state, "config_vector", int)
        enabled = _field(state, "enabled", bool)
        function_mask = _field(state, "function_mask", bool)
        with self._lock:
            self.table[:] = image
            for v in range(self.vectors):
                self.table[v * ENTRY_SIZE + ENTRY_CONTROL] &= VECTOR_MASKED
                self.table[v * ENTRY_SIZE + ENTRY_CONTROL + 1 : (v + 1) * ENTRY_SIZE] = bytes(3)
            self.pending = pending
            self.enabled, self.function_mask = enabled, function_mask
            self.config_vector = self._valid(config_vector)
            self.queue_vectors = [self._valid(v) for v in _ints(vectors)]
            self._show_control()
            self._refresh()
        if self.on_enable is not None:
            self.on_enable()


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _ints(values: Sequence[object]) -> list[int]:
    return [v for v in values if type(v) is int]


def _bad(name: str, value: object) -> XInterfaceError:
    return XInterfaceError(errno.EINVAL, f"MSI-X state: bad {name}", argument=name,
                           value=value)


def _field(state: Mapping[str, object], name: str, kind: type[T]) -> T:
    value = state.get(name)
    if type(value) is not kind:     # exactly: a bool is no vector number
        raise _bad(name, value)
    return value
