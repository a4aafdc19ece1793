"""The split virtqueue (virtio 1.2 §2.7), device side, in guest RAM reached through the
xinterface.

The transport writes the queue's configuration (``size``, the three ring addresses,
``ready``); the device takes available chains with :meth:`VirtQueue.pop` (or iterates the
queue), gives them back with :meth:`VirtQueue.add_used`, and asks :meth:`needs_interrupt`
whether the driver wants a used buffer notification. The rings are mapped once, as zero-copy
views, when the queue is first used. A ring may cross from one memory region into the next
(any guest-physical address is the driver's to choose, §2.7): it is then mapped as one view
per region, joined by :class:`Spliced`.

Atomicity: the driver reads ``used.idx`` while we write it, and writes ``avail.idx`` while we
read it. ``struct``'s little-endian ``pack_into``/``unpack_from`` move one byte at a time, so a
driver polling ``used.idx`` across 0x00ff -> 0x0100 could see 0x0000 and take 65,280 entries as
used. Every ring field the other side may change under us is therefore reached through a
16-bit view (``memoryview.cast("H")``): CPython moves an item of it with one 2-byte load or
store, which x86 makes atomic for an aligned address (the rings are 2- and 4-byte aligned).

Memory ordering: the driver is a vCPU of the same x86 host. x86 keeps loads in order with
loads and stores in order with stores, so reading ``avail.idx`` before the ring entries, and
writing a used element before ``used.idx`` (§2.7.8.2), need no barrier from us. A store then a
load of another location can be reordered: where the spec's protocol needs that order
(publishing ``avail_event`` then re-reading ``avail.idx``; publishing ``used.idx`` then
reading ``used_event``), :func:`fence` issues a full barrier.

The compiled data path (``xinterface._dataplane``, chosen by :mod:`xinterface.accel`) serves
the built-in devices' chains in C under the same rules; :meth:`VirtQueue.compiled_regions`
says whether it can serve this queue and gives it the guest memory. It hands back (code
``PYTHON``) every chain it does not serve, untouched, for :meth:`VirtQueue.pop`: the
walk here stays the one that reports a broken rule.
"""

from __future__ import annotations

import bisect
import errno
import struct
import threading
from collections.abc import Iterator

from .. import accel
from ..errors import XInterfaceError
from ..interface import XInterface
from ..maps import GuestMap, XVMap
from ..memory import MemoryRegion
from .chain import (
    DESC,
    DESC_SIZE,
    DescriptorChain,
    ReadDesc,
    VirtqueueError,
    map_buffers,
    map_range,
    table_reader,
    walk,
)

# §2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is 32768."
MAX_QUEUE_SIZE = 32768
# §2.7 table "Virtqueue Part" alignments: descriptor table 16, available ring 2, used ring 4.
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4
# §2.7.6 struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
# §2.7.8 struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[size];
# le16 avail_event; }, struct virtq_used_elem { le32 id; le32 len; }
VIRTQ_USED_F_NO_NOTIFY = 1
RING_HEADER = 4
USED_ELEM = struct.Struct("<II")

_barrier = threading.Lock()


def _lock_fence() -> None:
    """A full memory barrier. Taking a lock is a locked read-modify-write (``lock cmpxchg``)
    on x86, which orders every earlier store before every later load."""
    _barrier.acquire()
    _barrier.release()


fence = accel.dataplane.fence if accel.dataplane is not None else _lock_fence
"""A full memory barrier: ``mfence`` in the compiled data path, else a lock taken."""


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring for ``size`` entries
    (§2.7 table: 16*size, 6+2*size, 6+8*size, event fields included)."""
    return DESC_SIZE * size, RING_HEADER + 2 * size + 2, RING_HEADER + 8 * size + 2


def need_event(event: int, new: int, old: int) -> bool:
    """§2.7.10 (VIRTIO_F_EVENT_IDX): notify if ``event`` lies in ``[old, new)``, mod 2^16."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class Spliced:
    """A ring mapped as consecutive views, one per memory region it crosses.

    ``read``/``write`` move bytes at any offset, across views; ``ring[i]`` is 16-bit item
    ``i``, read or written with one 2-byte load or store as a ``cast("H")`` view's is: the
    rings are 2-aligned and regions page-aligned, so no 16-bit field straddles two views.
    """

    __slots__ = ("_h", "_starts", "_views")

    def __init__(self, maps: list[XVMap]) -> None:
        self._views = [m.addr for m in maps]
        self._h = [m.cast("H") for m in maps]
        self._starts: list[int] = []
        at = 0
        for view in self._views:
            self._starts.append(at)
            at += view.nbytes

    @property
    def readonly(self) -> bool:
        return any(v.readonly for v in self._views)

    def read(self, offset: int, n: int) -> bytes:
        out = bytearray()
        k = bisect.bisect_right(self._starts, offset) - 1
        while len(out) < n:
            at = offset + len(out) - self._starts[k]
            out += self._views[k][at:at + n - len(out)]
            k += 1
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        done = 0
        k = bisect.bisect_right(self._starts, offset) - 1
        while done < len(data):
            view = self._views[k]
            at = offset + done - self._starts[k]
            n = min(view.nbytes - at, len(data) - done)
            view[at:at + n] = data[done:done + n]
            done += n
            k += 1

    def descriptor(self, i: int) -> tuple[int, int, int, int]:
        """Entry ``i`` of a descriptor table (§2.7.5)."""
        addr, length, flags, nxt = DESC.unpack(self.read(i * DESC_SIZE, DESC_SIZE))
        return addr, length, flags, nxt

    def __getitem__(self, i: int) -> int:
        k = bisect.bisect_right(self._starts, 2 * i) - 1
        return int(self._h[k][i - self._starts[k] // 2])

    def __setitem__(self, i: int, value: int) -> None:
        k = bisect.bisect_right(self._starts, 2 * i) - 1
        self._h[k][i - self._starts[k] // 2] = value


class VirtQueue:
    """One split virtqueue. ``lock`` is held by whoever processes it (see VirtioDevice)."""

    def __init__(self, index: int, max_size: int = 256) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise XInterfaceError(errno.EINVAL, f"max_size {max_size} must be a power of two "
                                  f"from 1 to {MAX_QUEUE_SIZE}", argument="max_size",
                                  value=max_size)
        self.index = index
        self.max_size = max_size
        self.lock = threading.Lock()
        # The thread serving the queue under ``lock`` (VirtioDevice.process), so a reset
        # from that very thread knows not to wait for the lock.
        self.owner: int | None = None
        self._maps: list[GuestMap] = []
        # Each ring is one view, or a Spliced one when it crosses regions.
        self._desc: memoryview | Spliced | None = None
        self._used: memoryview | Spliced = memoryview(b"")   # bytes: used elements
        # 16-bit views of the two rings (see the module's note on atomicity); x86 is
        # little-endian, as the split ring is (§2.7).
        self._avail16: memoryview | Spliced = memoryview(b"").cast("H")
        self._used16: memoryview | Spliced = memoryview(b"").cast("H")
        self.size = max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.event_idx = False
        self.indirect = False
        self.next_avail = 0
        self.next_used = 0
        self._signalled_used: int | None = None
        self._intf: XInterface | None = None
        # Reads descriptor ``i`` of the ring's table: bound once at map time, not per chain.
        self._read_desc: ReadDesc | None = None
        # Set by VirtioDevice.process while it serves the queue: ``add_used`` then leaves
        # ``used.idx`` to one store per batch (``publish_used``), so a doorbell that brought
        # 32 requests costs one index store and one interrupt decision, not 32.
        self.batching = False
        # The rings lie in one region each, so the compiled data path can reach them.
        self._compiled = False

    # --- the transport's side ---------------------------------------------------------------
    def reset(self) -> None:
        """Back to the state after a device reset: not ready, nothing mapped."""
        self.unmap()
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.event_idx = self.indirect = False
        self.next_avail = self.next_used = 0
        self._signalled_used = None

    def check(self) -> str | None:
        """Why the driver's configuration cannot be used, or None."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            return (f"queue {self.index}: size {size} is not a power of two from 1 to "
                    f"{self.max_size}")
        for name, addr, align in (("descriptor table", self.desc_addr, DESC_ALIGN),
                                  ("available ring", self.avail_addr, AVAIL_ALIGN),
                                  ("used ring", self.used_addr, USED_ALIGN)):
            if addr % align:
                return f"queue {self.index}: {name} at {addr:#x} is not {align}-byte aligned"
        return None

    def map(self, intf: XInterface) -> None:
        """Map the three rings (done by the first use); VirtqueueError if they are not RAM."""
        self.unmap()
        reason = self.check()
        if reason:
            raise VirtqueueError(reason)
        desc_len, avail_len, used_len = ring_sizes(self.size)
        try:
            desc, _ = self._map_ring(intf, self.desc_addr, desc_len)
            _, avail16 = self._map_ring(intf, self.avail_addr, avail_len)
            used, used16 = self._map_ring(intf, self.used_addr, used_len)
        except VirtqueueError as exc:
            self.unmap()
            raise VirtqueueError(f"queue {self.index}: ring not in guest RAM: {exc}") from None
        if used.readonly:  # the firmware ROM: the device could not write it
            self.unmap()
            raise VirtqueueError(f"queue {self.index}: used ring at {self.used_addr:#x} is "
                                 "read-only memory")
        self._intf = intf
        self._desc, self._used = desc, used
        self._read_desc = desc.descriptor if isinstance(desc, Spliced) else table_reader(desc)
        self._avail16, self._used16 = avail16, used16
        self._compiled = accel.dataplane is not None and not any(
            isinstance(ring, Spliced) for ring in (desc, avail16, used))

    def _map_ring(self, intf: XInterface, gpa: int, length: int
                  ) -> tuple[memoryview | Spliced, memoryview | Spliced]:
        """One ring as (bytes, 16-bit items): plain views when it lies in one region."""
        try:
            m = intf.vmap(gpa, length)
        except XInterfaceError as exc:
            if exc.errno != errno.EFAULT:
                raise VirtqueueError(str(exc)) from None
        else:
            self._maps.append(m)
            return m.addr, m.cast("H")
        parts: list[GuestMap] = []
        try:
            map_range(intf, gpa, length, parts)
        finally:
            self._maps.extend(parts)
        pieces = [p for p in parts if isinstance(p, XVMap)]
        if any(p.gpa % 2 or p.len % 2 for p in pieces):
            # Regions are page-aligned (KVM memory slots), so this needs an odd region.
            raise VirtqueueError(f"ring at {gpa:#x} is split by a region boundary at an odd "
                                 "address")
        ring = Spliced(pieces)
        return ring, ring

    def unmap(self) -> None:
        maps, self._maps = self._maps, []
        self._compiled = False
        self._desc = None
        self._read_desc = None
        self._avail16 = self._used16 = memoryview(b"").cast("H")
        self._used = memoryview(b"")
        for m in maps:
            if not m.released:
                m.put()

    @property
    def mapped(self) -> bool:
        return self._desc is not None

    # --- the device's side ------------------------------------------------------------------
    def compiled_regions(self) -> list[MemoryRegion] | None:
        """The guest memory's regions for the compiled data path (``accel.dataplane``), or
        None when it cannot serve this queue now: not built or forced off, the queue not
        mapped (reset under its handler), a ring split across regions, the memory gone.
        The C functions translate every guest address against these regions."""
        intf = self._intf
        if not self._compiled or intf is None:
            return None
        try:
            # The region table itself: the C side exports each region's mmap for the
            # length of its call, as a view would, so none is unmapped under it.
            return intf.memory_regions()
        except XInterfaceError:
            return None   # the interface released: pop() says what the Python path does

    def avail_idx(self) -> int:
        return self._avail16[1]

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken yet."""
        idx = self.avail_idx()
        n = (idx - self.next_avail) & 0xFFFF
        if n > self.size:
            # §2.7.13.3: the driver never has more than Queue Size buffers outstanding.
            raise VirtqueueError(f"queue {self.index}: avail.idx {idx} is {n} ahead of the "
                                 f"device ({self.next_avail}), more than the size {self.size}")
        return n

    def pop(self) -> DescriptorChain | None:
        """The next available chain, mapped; None when there is none. VirtqueueError when the
        driver broke a rule (the queue is then unusable until the device is reset)."""
        read = self._read_desc
        if read is None or not self.pending():
            return None   # not mapped: reset under the handler serving it (see VirtioDevice)
        size = self.size
        head = self._avail16[2 + self.next_avail % size]
        if head >= size:
            raise VirtqueueError(f"queue {self.index}: available head {head} is outside the "
                                 f"descriptor table ({size} entries)")
        buffers = walk(read, head, size, indirect=self.indirect, read_table=self._read_table)
        intf = self._intf
        assert intf is not None
        maps, readable, writable = map_buffers(intf, buffers)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return DescriptorChain(head, buffers, maps, readable, writable)

    def _read_table(self, gpa: int, length: int) -> bytes:
        """An indirect table's bytes (§2.7.5.3), copied: the driver may not change it while
        the chain is outstanding, but a copy makes sure a hostile one cannot either."""
        intf = self._intf
        assert intf is not None
        try:
            return intf.copy_from(gpa, length)
        except XInterfaceError as exc:
            raise VirtqueueError(f"queue {self.index}: indirect table not in guest RAM: "
                                 f"{exc}") from None

    def __iter__(self) -> Iterator[DescriptorChain]:
        while (chain := self.pop()) is not None:
            yield chain

    def add_used(self, chain: DescriptorChain | int, length: int, *,
                 publish: bool = True) -> None:
        """Give ``chain`` back with ``length`` bytes written to its writable buffers (capped at
        their size; its views are released), or the chain whose head is ``chain`` (a device
        that kept only the head). ``used.len`` is written before ``used.idx`` (§2.7.8.2).

        ``publish=False`` writes the used element but not ``used.idx``: a device that returns
        several chains as one unit (virtio-net's mergeable receive buffers, §5.1.6.4.2) makes
        them visible together with :meth:`publish_used`, so the driver never sees part of it.
        """
        if isinstance(chain, DescriptorChain):
            if chain.used:
                raise ValueError(f"{chain!r} was given back already")
            length = max(0, min(length, chain.writable_len))
            chain.used = True
            chain.release()
            head = chain.head
        else:
            head = chain
            length = max(0, min(length, 0xFFFFFFFF))
        if self._desc is None:
            return   # reset meanwhile: the driver has every buffer back (§2.4)
        slot = self.next_used % self.size
        used = self._used
        if isinstance(used, Spliced):
            used.write(RING_HEADER + 8 * slot, USED_ELEM.pack(head, length))
        else:
            USED_ELEM.pack_into(used, RING_HEADER + 8 * slot, head, length)
        self.next_used = (self.next_used + 1) & 0xFFFF
        if publish and not self.batching:
            self._used16[1] = self.next_used

    def publish_used(self) -> None:
        """Make every element added with ``add_used(..., publish=False)`` visible."""
        if self._desc is not None:
            self._used16[1] = self.next_used

    def unpop(self, chains: list[DescriptorChain]) -> None:
        """Put back the last ``len(chains)`` chains taken with :meth:`pop` and not used: they
        are available again, in the same order (a receive buffer that cannot take the frame
        that is waiting stays the driver's, as QEMU's ``virtqueue_unpop`` keeps it)."""
        for chain in chains:
            chain.release()
        self.next_avail = (self.next_avail - len(chains)) & 0xFFFF

    @property
    def signalled_used(self) -> int | None:
        """The used index of the last used buffer notification decision with EVENT_IDX
        (None before the first): what :meth:`needs_interrupt` compares ``used_event`` with,
        kept by a snapshot so a restored queue neither skips nor repeats one."""
        return self._signalled_used

    @signalled_used.setter
    def signalled_used(self, value: int | None) -> None:
        self._signalled_used = value

    def needs_interrupt(self) -> bool:
        """Whether the driver wants a used buffer notification for the buffers used since the
        last call (§2.7.7: ``used_event`` with VIRTIO_F_EVENT_IDX, else NO_INTERRUPT)."""
        fence()  # our used.idx store before the load of the driver's used_event or flags
        new = self.next_used
        if self.event_idx:
            old, self._signalled_used = self._signalled_used, new
            if old is None:
                return True
            return need_event(self._avail16[2 + self.size], new, old)   # used_event
        return not self._avail16[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def set_notification(self, enable: bool) -> None:
        """Ask the driver to notify (or not) for new buffers (§2.7.10): ``avail_event`` with
        VIRTIO_F_EVENT_IDX, else the NO_NOTIFY flag. Only a hint: the driver may notify."""
        if self.event_idx:
            if enable:
                # The driver's current avail.idx, not next_avail: buffers the device left
                # available (too few for it) do not count as new (QEMU does the same).
                self._used16[2 + 4 * self.size] = self.avail_idx()   # avail_event
        else:
            self._used16[0] = 0 if enable else VIRTQ_USED_F_NO_NOTIFY

    def enable_notification(self) -> bool:
        """Re-enable notifications; True if buffers arrived meanwhile (take them now, since
        the driver may have seen notifications disabled and not notified)."""
        self.set_notification(True)
        fence()  # our avail_event/flags store before the load of avail.idx
        return self.pending() > 0

    def __repr__(self) -> str:
        return (f"VirtQueue({self.index}, size={self.size}, ready={self.ready}, "
                f"avail={self.next_avail}, used={self.next_used})")
