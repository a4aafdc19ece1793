"""Descriptor chains of a split virtqueue (virtio 1.2 §2.7.5): walked, checked, and mapped.

A chain is read from guest memory once, every rule a device can check is checked (indexes in
range, no loop, no nested or unnegotiated INDIRECT, device-writable descriptors only after
device-readable ones), then its buffers are mapped through the xinterface as zero-copy views:
device-readable buffers as read-only ``memoryview``\\ s, device-writable ones writable. A chain
that breaks a rule raises :class:`VirtqueueError`; the device then needs a reset (§2.1.2).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

from ..errors import XInterfaceError
from ..interface import XInterface
from ..maps import GuestMap

# §2.7.5 The Virtqueue Descriptor Table: struct virtq_desc { le64 addr; le32 len; le16 flags;
# le16 next; } and its flags.
DESC = struct.Struct("<QIHH")
DESC_SIZE = DESC.size
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# §2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total".
MAX_CHAIN_BYTES = 1 << 32


class VirtqueueError(Exception):
    """The driver broke a rule of the virtqueue; the device enters DEVICE_NEEDS_RESET."""


Descriptor = tuple[int, int, bool]  # (gpa, length, device-writable)
ReadDesc = Callable[[int], tuple[int, int, int, int]]


def walk(read: ReadDesc, head: int, size: int, *, indirect: bool,
         read_table: Callable[[int, int], bytes]) -> list[Descriptor]:
    """The buffers of the chain at ``head``: ``read(i)`` gives descriptor ``i`` of the ring's
    table (``size`` entries), ``read_table(gpa, length)`` an indirect table's bytes.

    A chain visits at most ``size`` descriptors of a table (§2.7.5.3.1: no chain longer than
    the Queue Size), which also ends any loop.
    """
    out: list[Descriptor] = []
    total = 0
    seen_write = in_indirect = False
    table: ReadDesc = read
    entries = size
    budget = size
    i = head
    while True:
        if i >= entries:
            where = "indirect table" if in_indirect else "descriptor table"
            raise VirtqueueError(f"descriptor index {i} is outside the {where} "
                                 f"({entries} entries), chain head {head}")
        if budget == 0:
            raise VirtqueueError(f"chain at head {head} is longer than {entries} descriptors "
                                 "(a loop?)")
        budget -= 1
        addr, length, flags, nxt = table(i)
        if flags & VIRTQ_DESC_F_INDIRECT:
            # §2.7.5.3.1: only with VIRTIO_F_INDIRECT_DESC, never inside an indirect table,
            # never together with NEXT; the table holds whole descriptors.
            if in_indirect:
                raise VirtqueueError(f"INDIRECT descriptor inside an indirect table (head {head})")
            if not indirect:
                raise VirtqueueError(f"INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC "
                                     f"(head {head})")
            if flags & VIRTQ_DESC_F_NEXT:
                raise VirtqueueError(f"descriptor {i} has both INDIRECT and NEXT (head {head})")
            if length == 0 or length % DESC_SIZE or length // DESC_SIZE > size:
                raise VirtqueueError(f"indirect table of {length} bytes at {addr:#x}: it must "
                                     f"hold 1 to {size} descriptors of {DESC_SIZE} bytes")
            data = read_table(addr, length)
            table = table_reader(data)
            entries = budget = length // DESC_SIZE
            in_indirect = True
            i = 0
            continue
        writable = bool(flags & VIRTQ_DESC_F_WRITE)
        if seen_write and not writable:
            # §2.7.4.2: device-writable descriptors come after every device-readable one.
            raise VirtqueueError(f"device-readable descriptor {i} after a device-writable one "
                                 f"(head {head})")
        seen_write |= writable
        total += length
        if total > MAX_CHAIN_BYTES:
            raise VirtqueueError(f"chain at head {head} is longer than 2^32 bytes")
        out.append((addr, length, writable))
        if not flags & VIRTQ_DESC_F_NEXT:
            return out
        i = nxt


def table_reader(data: bytes | memoryview) -> ReadDesc:
    """Descriptor ``i`` of the table held in ``data``."""
    def read(i: int) -> tuple[int, int, int, int]:
        addr, length, flags, nxt = DESC.unpack_from(data, i * DESC_SIZE)
        return addr, length, flags, nxt
    return read


def map_buffers(intf: XInterface, buffers: Sequence[Descriptor]
                ) -> tuple[list[GuestMap], list[memoryview], list[memoryview]]:
    """Zero-copy views of ``buffers``: ``(maps, readable, writable)``.

    One ``sgmap`` for the whole chain in the common case. A buffer that spans two adjacent
    memory regions (one view maps one region) is split where the regions meet. Zero-length
    buffers carry no bytes and get no view. A byte outside guest RAM: :class:`VirtqueueError`.
    """
    items = [(gpa, length) for gpa, length, _ in buffers if length]
    if not items:
        return [], [], []
    sg = intf.sgmap_walked(items)
    if sg is None:
        return _map_by_region(intf, buffers, items)
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    views = sg.views
    k = 0
    for gpa, length, w in buffers:
        if not length:
            continue
        view = views[k]
        k += 1
        if not w:
            # §2.7.5.1: "A device MUST NOT write to a device-readable buffer": it cannot.
            readable.append(view.toreadonly())
        elif view.readonly:
            sg.put()
            raise _read_only(gpa)
        else:
            writable.append(view)
    return [sg], readable, writable


def _read_only(gpa: int) -> VirtqueueError:
    # The firmware ROM: its views are read-only, as the guest's own writes to it are
    # dropped. A device-writable buffer there is a bad descriptor.
    return VirtqueueError(f"device-writable buffer at {gpa:#x} is read-only memory")


def _map_by_region(intf: XInterface, buffers: Sequence[Descriptor],
                   items: list[tuple[int, int]]
                   ) -> tuple[list[GuestMap], list[memoryview], list[memoryview]]:
    """map_buffers for a chain with a buffer across regions (or outside RAM)."""
    flags = [w for _, length, w in buffers if length]
    maps: list[GuestMap] = []
    views: list[list[memoryview]] = []
    try:
        for gpa, length in items:
            views.append(map_range(intf, gpa, length, maps))
    except BaseException:
        for m in maps:
            m.put()
        raise
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    for (gpa, _), parts, w in zip(items, views, flags, strict=True):
        if w:
            if any(p.readonly for p in parts):
                for m in maps:
                    m.put()
                raise _read_only(gpa)
            writable.extend(parts)
        else:
            readable.extend(p.toreadonly() for p in parts)
    return maps, readable, writable


def map_range(intf: XInterface, gpa: int, length: int, maps: list[GuestMap]) -> list[memoryview]:
    """``[gpa, gpa+length)`` as views of consecutive regions (one view when it lies in one),
    their maps appended to ``maps``; VirtqueueError for a byte that is not guest RAM."""
    parts: list[memoryview] = []
    try:
        whole = intf.vmap(gpa, length)
    except XInterfaceError:
        pass
    else:
        maps.append(whole)
        return [whole.addr]
    while length:
        # The largest mappable prefix: regions are contiguous, so success is monotone.
        lo, hi = 0, length
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                intf.vmap(gpa, mid).put()
                lo = mid
            except XInterfaceError:
                hi = mid - 1
        if lo == 0:
            raise VirtqueueError(f"buffer byte {gpa:#x} is not guest RAM")
        m = intf.vmap(gpa, lo)
        maps.append(m)
        parts.append(m.addr)
        gpa += lo
        length -= lo
    return parts


def total(views: Iterable[memoryview]) -> int:
    return sum(v.nbytes for v in views)


def split(views: Sequence[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``n`` bytes of a scatter list and the rest, as views (no copy)."""
    head: list[memoryview] = []
    rest: list[memoryview] = []
    for i, v in enumerate(views):
        if n <= 0:
            rest.extend(views[i:])
            break
        if v.nbytes <= n:
            head.append(v)
            n -= v.nbytes
        else:
            head.append(v[:n])
            rest.append(v[n:])
            rest.extend(views[i + 1:])
            n = 0
            break
    return head, rest


def split_tail(views: Sequence[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """All but the last ``n`` bytes of a scatter list, and those last ``n`` bytes."""
    return split(views, max(0, total(views) - n))


def gather(views: Iterable[memoryview]) -> bytes:
    return b"".join(bytes(v) for v in views)


def scatter(views: Iterable[memoryview], data: bytes | memoryview) -> int:
    """Copy ``data`` into the views in order; the number of bytes written."""
    src = memoryview(data)
    done = 0
    for v in views:
        if done >= len(src):
            break
        n = min(v.nbytes, len(src) - done)
        v[:n] = src[done:done + n]
        done += n
    return done


class DescriptorChain:
    """One available buffer: ``head`` (its id in the used ring), and its buffers as views.

    ``readable``: the device-readable buffers, in order, as read-only ``memoryview``\\ s;
    ``writable``: the device-writable ones. The views are valid until the chain is given back
    with :meth:`VirtQueue.add_used` (or :meth:`release` is called).
    """

    __slots__ = ("_maps", "buffers", "head", "readable", "used", "writable")

    def __init__(self, head: int, buffers: list[Descriptor], maps: list[GuestMap],
                 readable: list[memoryview], writable: list[memoryview]) -> None:
        self.head = head
        self.buffers = buffers
        self._maps = maps
        self.readable = readable
        self.writable = writable
        self.used = False

    @property
    def readable_len(self) -> int:
        return total(self.readable)

    @property
    def writable_len(self) -> int:
        return total(self.writable)

    def read(self) -> bytes:
        """Every device-readable byte, concatenated (a copy)."""
        return gather(self.readable)

    def write(self, data: bytes | memoryview) -> int:
        """Copy ``data`` to the start of the device-writable buffers; bytes written."""
        return scatter(self.writable, data)

    def release(self) -> None:
        """Drop the views (done by ``add_used``); harmless twice."""
        maps, self._maps = self._maps, []
        views = self.readable + self.writable
        self.readable = []
        self.writable = []
        # The read-only views are derived from the maps' views and would keep guest memory
        # exported after the maps are put: release them all first.
        for v in views:
            v.release()
        for m in maps:
            if not m.released:
                m.put()

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_len}, "
                f"writable={self.writable_len})")
