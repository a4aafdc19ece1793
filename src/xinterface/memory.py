"""Guest RAM: memfd-backed mmaps registered as KVM memory slots, and gpa translation.

Each region is one memfd (so it can be mapped again elsewhere, e.g. as a ROM alias) and one
``MAP_SHARED`` mapping of it, registered as one KVM slot.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Sequence

from .checks import is_int
from .errors import XInterfaceError
from .kvm.uapi import KVM_MEM_READONLY, PAGE_SIZE
from .kvm.vmfd import VmFd

GiB = 1 << 30
# The conventional PC hole for MMIO and firmware below 4 GiB: RAM above 3 GiB moves to 4 GiB.
LOW_RAM_TOP = 3 * GiB
HIGH_RAM_BASE = 4 * GiB


def host_ram_bytes() -> int:
    """Physical memory of the host: no guest may ask for more."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_layout(size: int) -> list[tuple[int, int]]:
    """``size`` bytes of RAM at gpa 0, split around the hole below 4 GiB when larger than 3 GiB."""
    if size <= LOW_RAM_TOP:
        return [(0, size)]
    return [(0, LOW_RAM_TOP), (HIGH_RAM_BASE, size - LOW_RAM_TOP)]


def seal_size(fd: int) -> None:
    """Fix the size of the memfd ``fd`` for good (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL):
    a process it is shared with (a vhost-user backend) can map it without a truncation ever
    turning its accesses into SIGBUS, and the backend can see so (F_GET_SEALS)."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)


def mmap_address(mapping: mmap.mmap) -> int:
    """The host virtual address of an mmap, without keeping a buffer export alive."""
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


class MemoryRegion:
    """One slot: ``size`` bytes at ``gpa``, host memory in ``mapping``. (A plain class, not a
    dataclass: ``dataclasses`` imports ``inspect``, a sixth of ``xinterface run``'s start-up.)"""

    __slots__ = ("gpa", "mapping", "memfd", "offset", "readonly", "size", "slot", "view")

    def __init__(self, gpa: int, size: int, slot: int, readonly: bool, memfd: int,
                 mapping: mmap.mmap, view: memoryview, offset: int = 0) -> None:
        self.gpa, self.size, self.slot, self.readonly = gpa, size, slot, readonly
        # ``offset``: where in ``memfd`` the region starts (a vhost-user backend maps it so).
        self.memfd, self.mapping, self.view, self.offset = memfd, mapping, view, offset

    def __repr__(self) -> str:
        return (f"MemoryRegion(gpa={self.gpa:#x}, size={self.size:#x}, slot={self.slot}, "
                f"readonly={self.readonly}, memfd={self.memfd})")

    @property
    def end(self) -> int:
        return self.gpa + self.size


def _check_region(gpa: int, size: int, index: int) -> None:
    if not is_int(gpa) or not is_int(size):
        raise XInterfaceError(errno.EINVAL, f"memory region {index} ({gpa!r}, {size!r}): gpa "
                              "and size must be ints", argument="memory", value=(gpa, size))
    what = f"memory region {index} (gpa {gpa:#x}, size {size:#x})"
    if size <= 0 or size % PAGE_SIZE:
        raise XInterfaceError(errno.EINVAL, f"{what}: size must be a positive multiple of 4 KiB",
                              argument="memory", value=size)
    if gpa < 0 or gpa % PAGE_SIZE or gpa + size > 1 << 52:
        raise XInterfaceError(errno.EINVAL, f"{what}: gpa must be 4 KiB aligned and the region "
                              "inside the 52-bit physical address space",
                              argument="memory", value=gpa)


class GuestMemory:
    """The guest's RAM regions, sorted by gpa, each a KVM memory slot of ``vm``."""

    def __init__(self, vm: VmFd, layout: Iterable[tuple[int, int]]) -> None:
        self._vm = vm
        self.regions: list[MemoryRegion] = []
        self._starts: list[int] = []
        # Host mappings no longer in the guest's map but still viewed by a client's vmap or
        # sgmap (see _unmap): unmapped by close(), once those views are released.
        self._retired: list[MemoryRegion] = []
        wanted = sorted(layout)
        if not wanted:
            raise XInterfaceError(errno.EINVAL, "memory: at least one region is needed",
                                  argument="memory", value=wanted)
        for i, (gpa, size) in enumerate(wanted):
            _check_region(gpa, size, i)
            if i and gpa < wanted[i - 1][0] + wanted[i - 1][1]:
                raise XInterfaceError(errno.EINVAL, f"memory regions overlap at gpa {gpa:#x}",
                                      argument="memory", value=wanted)
        total = sum(size for _, size in wanted)
        if total > host_ram_bytes():
            raise XInterfaceError(
                errno.ENOMEM, f"memory: {total:#x} bytes asked, the host has only "
                f"{host_ram_bytes():#x}", argument="memory", value=total)
        try:
            for gpa, size in wanted:
                self.add_region(gpa, size)
        except BaseException:
            self.close()
            raise

    def add_region(self, gpa: int, size: int, *, readonly: bool = False,
                   memfd: int | None = None, offset: int = 0) -> MemoryRegion:
        """Map ``size`` bytes at ``gpa``: new zeroed RAM, or ``memfd`` at ``offset`` (an alias)."""
        _check_region(gpa, size, len(self.regions))
        i = bisect.bisect_right(self._starts, gpa)
        if (i and self.regions[i - 1].end > gpa) or (
            i < len(self.regions) and self.regions[i].gpa < gpa + size
        ):
            raise XInterfaceError(errno.EEXIST, f"gpa {gpa:#x}+{size:#x} overlaps guest memory",
                                  argument="gpa", value=gpa)
        if memfd is None:
            fd = os.memfd_create(f"xinterface-ram-{gpa:#x}",
                                 os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        else:
            fd = os.dup(memfd)
        try:
            if memfd is None:
                os.ftruncate(fd, size)
                seal_size(fd)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        except BaseException:
            os.close(fd)
            raise
        slot = max((r.slot for r in self.regions), default=-1) + 1
        try:
            self._vm.set_user_memory_region(slot, gpa, size, mmap_address(mapping),
                                            KVM_MEM_READONLY if readonly else 0)
        except BaseException:
            mapping.close()
            os.close(fd)
            raise
        region = MemoryRegion(gpa, size, slot, readonly, fd, mapping, memoryview(mapping),
                              offset)
        self.regions.insert(i, region)
        self._starts.insert(i, gpa)
        return region

    def punch(self, gpa: int, size: int) -> None:
        """Take ``[gpa, gpa+size)`` out of guest RAM (for a ROM alias, say): the region holding
        it becomes the parts before and after, the same memory mapped again, contents kept."""
        region = self.region_at(gpa)
        if region is None or gpa + size > region.end or region.readonly:
            raise XInterfaceError(errno.EINVAL, f"gpa {gpa:#x}+{size:#x} is not inside one RAM "
                                  "region", argument="gpa", value=gpa)
        pieces = [(region.gpa, gpa - region.gpa), (gpa + size, region.end - gpa - size)]
        i = self.regions.index(region)
        self._vm.set_user_memory_region(region.slot, region.gpa, 0, 0)  # size 0 deletes it
        del self.regions[i], self._starts[i]
        try:
            for start, length in pieces:
                if length:
                    self.add_region(start, length, memfd=region.memfd,
                                    offset=start - region.gpa)
        finally:
            self._unmap(region)

    def remove_region(self, region: MemoryRegion) -> None:
        """Unmap ``region`` (one that :meth:`add_region` returned) from the guest and the host."""
        i = self.regions.index(region)
        self._vm.set_user_memory_region(region.slot, region.gpa, 0, 0)  # size 0 deletes it
        del self.regions[i], self._starts[i]
        self._unmap(region)

    def _unmap(self, region: MemoryRegion) -> None:
        """Close the host mapping of a region the guest no longer has, unless a client still
        views it: mmap refuses to unmap under a live view, so it is kept until close(). Such
        views go on seeing the same memfd pages as the guest (MAP_SHARED)."""
        region.view.release()
        try:
            region.mapping.close()
        except BufferError:
            region.view = memoryview(region.mapping)
            self._retired.append(region)
            return
        os.close(region.memfd)

    @property
    def size(self) -> int:
        """Bytes of guest RAM, aliases and ROM included."""
        return sum(r.size for r in self.regions)

    def region_at(self, gpa: int) -> MemoryRegion | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and gpa < self.regions[i].end:
            return self.regions[i]
        return None

    def spans(self, gpa: int, length: int) -> list[tuple[MemoryRegion, int, int]]:
        """``(region, offset, count)`` pieces covering ``[gpa, gpa+length)``, or EFAULT.

        Adjacent regions are crossed; the first byte not in RAM is named in the error.
        """
        if length < 0:
            raise XInterfaceError(errno.EINVAL, f"length {length} is negative",
                                  argument="length", value=length)
        pieces: list[tuple[MemoryRegion, int, int]] = []
        cur, left = gpa, length
        while left:
            region = self.region_at(cur) if cur >= 0 else None
            if region is None:
                raise XInterfaceError(
                    errno.EFAULT, f"gpa {cur:#x} is not guest RAM (access {gpa:#x}+{length:#x})",
                    argument="gpa", value=cur)
            count = min(left, region.end - cur)
            pieces.append((region, cur - region.gpa, count))
            cur += count
            left -= count
        return pieces

    def _within(self, gpa: int, length: int) -> tuple[MemoryRegion, int] | None:
        """The region and offset when ``[gpa, gpa+length)`` lies in one region (the fast path)."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and length >= 0:
            region = self.regions[i]
            offset = gpa - region.gpa
            if offset + length <= region.size:
                return region, offset
        return None

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of ``[gpa, gpa+length)``, which must lie in one region; read-only
        for a read-only region (the ROM), as the guest sees it."""
        hit = self._within(gpa, length)
        if hit is None:
            pieces = self.spans(gpa, length)
            if len(pieces) > 1:
                raise XInterfaceError(
                    errno.EFAULT, f"gpa {gpa:#x}+{length:#x} spans two memory regions; "
                    "one view maps one region", argument="length", value=length)
            if not pieces:
                return memoryview(b"")
            region, offset, length = pieces[0]
        else:
            region, offset = hit
        view = region.view[offset : offset + length]
        return view.toreadonly() if region.readonly else view

    def views(self, items: list[tuple[int, int]]) -> list[memoryview] | None:
        """One view per ``(gpa, length)`` (``length`` > 0), each as :meth:`view` gives it,
        when every element lies within one region; None when any does not, so the caller
        takes the region-by-region path. Nothing is checked but the translation: the
        elements come from the device's own descriptor walk."""
        out: list[memoryview] = []
        starts, regions = self._starts, self.regions
        for gpa, length in items:
            i = bisect.bisect_right(starts, gpa) - 1
            if i < 0:
                return None
            region = regions[i]
            offset = gpa - region.gpa
            if offset + length > region.size:
                return None
            view = region.view[offset : offset + length]
            out.append(view.toreadonly() if region.readonly else view)
        return out

    def read(self, gpa: int, length: int) -> bytes:
        hit = self._within(gpa, length)
        if hit is not None:
            region, offset = hit
            return region.mapping[offset : offset + length]
        return b"".join(bytes(r.view[o : o + n]) for r, o, n in self.spans(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``[gpa, ...)``: all of it, or nothing and ``EFAULT`` when a byte
        is outside RAM or in read-only memory (as ``kvm_write_guest`` refuses a read-only
        slot with ``-EFAULT``)."""
        if isinstance(data, bytes):
            hit = self._within(gpa, len(data))
            if hit is not None and not hit[0].readonly:
                region, offset = hit
                region.mapping[offset : offset + len(data)] = data
                return
        src = memoryview(data).cast("B")
        pieces = self.spans(gpa, len(src))
        for region, offset, _ in pieces:
            if region.readonly:
                raise XInterfaceError(
                    errno.EFAULT, f"gpa {region.gpa + offset:#x} is read-only memory (access "
                    f"{gpa:#x}+{len(src):#x})", argument="gpa", value=region.gpa + offset)
        done = 0
        for region, offset, count in pieces:
            region.view[offset : offset + count] = src[done : done + count]
            done += count

    def close(self) -> None:
        """Unmap every region. Views handed out must have been released (``BufferError`` else)."""
        for regions in (self.regions, self._retired):
            while regions:
                region = regions[-1]
                region.view.release()
                try:
                    region.mapping.close()
                except BufferError:
                    # mmap refuses to unmap under a live view: say which region, keep it.
                    region.view = memoryview(region.mapping)
                    raise BufferError(f"guest memory at gpa {region.gpa:#x} is still exported "
                                      "to a buffer (a view of a vmap?); release it first"
                                      ) from None
                regions.pop()
                if regions is self.regions:
                    self._starts.pop()
                os.close(region.memfd)


def layout_from(memory: int | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The region list for ``Machine(memory=...)``: a size, or ``(gpa, size)`` pairs."""
    if is_int(memory):
        _check_region(0, memory, 0)
        return default_layout(memory)
    bad = XInterfaceError(errno.EINVAL, f"memory {memory!r} is neither a size in bytes nor a "
                          "list of (gpa, size) int pairs", argument="memory", value=memory)
    if isinstance(memory, str | bytes) or not isinstance(memory, Iterable):
        raise bad
    layout: list[tuple[int, int]] = []
    for i, region in enumerate(memory):
        if not isinstance(region, tuple | list) or len(region) != 2:
            raise bad
        gpa, size = region
        _check_region(gpa, size, i)  # ints only: a float would be truncated silently
        layout.append((gpa, size))
    return layout
