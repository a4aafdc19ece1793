"""The frontend's memory table (SET_MEM_TABLE) as guest memory this process can reach.

Each region is the frontend's file (a memfd, or a hugetlbfs file) mapped ``MAP_SHARED`` from
its ``mmap_offset``. The table is a :class:`~xinterface.memory.GuestMemory` (without KVM
slots), so ``copy_to``/``copy_from``/``vmap``/``sgmap`` of an interface over it run the very
bound checks they run over a local VM: an address outside every region is ``EFAULT``, all or
nothing. Ring addresses (SET_VRING_ADDR) are the frontend's virtual addresses:
:meth:`MemoryTable.gpa_of` translates them through each region's ``user_addr``.

A region is refused before anything is mapped when it is empty, wraps the 64-bit space (in
guest-physical, user or file offsets), overlaps another one (in either space), reaches past
the end of its file (``fstat``), or when the fd is not a regular file.

A frontend that shrank its file after the table was mapped would make the next access to
the lost pages fault (SIGBUS), which no Python code can turn into an error: the process
dies. So every file's size is pinned before it is mapped: it must carry the seal
``F_SEAL_SHRINK`` (memfd_create(2); QEMU's ``memory-backend-memfd`` seals its memfd so by
default), or accept it from us (a memfd made with ``MFD_ALLOW_SEALING``), and its size is
read (``fstat``) only once it is sealed. A file that can shrink and cannot be sealed (a memfd
without ``MFD_ALLOW_SEALING``, a tmpfs or hugetlbfs file opened by path) is refused.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import stat
from collections.abc import Sequence

from ..errors import XInterfaceError
from ..memory import GuestMemory, MemoryRegion
from .protocol import Region

_LIMIT = 1 << 64


class MemoryTable(GuestMemory):
    """The regions of one SET_MEM_TABLE, mapped; owns the fds (closed by :meth:`close`).

    ``XInterfaceError(EINVAL)`` (every fd closed, nothing mapped) for a table that breaks a
    rule above; the message names the region.
    """

    def __init__(self, regions: Sequence[Region], fds: Sequence[int]) -> None:
        # Not GuestMemory.__init__: that one creates RAM and KVM slots; this one maps what
        # the frontend gave. The attributes its translation methods read are the same.
        self.regions: list[MemoryRegion] = []
        self._starts: list[int] = []
        self._retired: list[MemoryRegion] = []
        self.user: list[tuple[int, int, int]] = []   # (user_addr, size, gpa), sorted
        try:
            if len(regions) != len(fds):
                raise XInterfaceError(errno.EINVAL, f"{len(regions)} regions but {len(fds)} "
                                      "fds", argument="fds", value=len(fds))
            _validate(regions, fds)
            for region, fd in sorted(zip(regions, fds, strict=True)):
                self._map(region, fd)
        except BaseException:
            mapped = {r.memfd for r in self.regions}
            self.close()
            for fd in fds:
                if fd not in mapped:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            raise
        self.user.sort()

    def _map(self, region: Region, fd: int) -> None:
        mapping = mmap.mmap(fd, region.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=region.mmap_offset)
        slot = len(self.regions)
        entry = MemoryRegion(region.gpa, region.size, slot, False, fd, mapping,
                             memoryview(mapping))
        i = bisect.bisect_right(self._starts, region.gpa)
        self.regions.insert(i, entry)
        self._starts.insert(i, region.gpa)
        self.user.append((region.user_addr, region.size, region.gpa))

    def gpa_of(self, user_addr: int, length: int) -> int:
        """The guest-physical address of the frontend's virtual ``user_addr``, whose
        ``length`` bytes must lie in one region; ``EFAULT`` else."""
        for start, size, gpa in self.user:
            if start <= user_addr and user_addr + length <= start + size:
                return gpa + (user_addr - start)
        raise XInterfaceError(errno.EFAULT, f"frontend address {user_addr:#x}+{length:#x} is "
                              "in no memory region", argument="user_addr", value=user_addr)

    def add_region(self, gpa: int, size: int, *, readonly: bool = False,
                   memfd: int | None = None, offset: int = 0) -> MemoryRegion:
        raise XInterfaceError(errno.EOPNOTSUPP, "the frontend owns the memory table",
                              argument="gpa", value=gpa)

    def punch(self, gpa: int, size: int) -> None:
        raise XInterfaceError(errno.EOPNOTSUPP, "the frontend owns the memory table",
                              argument="gpa", value=gpa)

    def remove_region(self, region: MemoryRegion) -> None:
        raise XInterfaceError(errno.EOPNOTSUPP, "the frontend owns the memory table",
                              argument="region", value=region)

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.gpa:#x}+{r.size:#x}" for r in self.regions)
        return f"MemoryTable([{parts}])"


def _bad(index: int, region: Region, why: str) -> XInterfaceError:
    return XInterfaceError(errno.EINVAL, f"memory region {index} (gpa {region.gpa:#x}, size "
                           f"{region.size:#x}, user {region.user_addr:#x}, offset "
                           f"{region.mmap_offset:#x}): {why}", argument="regions", value=region)


def _validate(regions: Sequence[Region], fds: Sequence[int]) -> None:
    for i, region in enumerate(regions):
        if region.size <= 0:
            raise _bad(i, region, "empty")
        for name, base in (("gpa", region.gpa), ("user address", region.user_addr),
                           ("mmap offset", region.mmap_offset)):
            if base + region.size > _LIMIT:
                raise _bad(i, region, f"{name} + size wraps the 64-bit space")
        if region.mmap_offset % mmap.ALLOCATIONGRANULARITY:
            raise _bad(i, region, "mmap offset is not page aligned")
    for space in ("gpa", "user_addr"):
        spans = sorted((getattr(r, space), r.size, i) for i, r in enumerate(regions))
        for (a, size, _), (b, _, j) in itertools.pairwise(spans):
            if b < a + size:
                raise _bad(j, regions[j], f"overlaps another region ({space})")
    for i, (region, fd) in enumerate(zip(regions, fds, strict=True)):
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise _bad(i, region, f"fd {fd}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _bad(i, region, "the fd is not a memory file (memfd, hugetlbfs or tmpfs)")
        _pin_size(i, region, fd)
        size = os.fstat(fd).st_size   # read once pinned: it can only grow from here
        if region.mmap_offset + region.size > size:
            raise _bad(i, region, f"reaches past the end of its file ({size:#x} bytes)")


def _pin_size(index: int, region: Region, fd: int) -> None:
    """Make sure the file behind ``fd`` can no longer shrink (F_SEAL_SHRINK), sealing it
    when it allows; refuse the region when it can neither be sealed nor is."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:   # EINVAL: a file system without seals
        seals = None
    if seals is not None and seals & fcntl.F_SEAL_SHRINK:
        return
    if seals is not None and not seals & fcntl.F_SEAL_SEAL:
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            return
        except OSError:
            pass
    raise _bad(index, region, "its file could shrink under the mapping (no F_SEAL_SHRINK, and "
               "it cannot be sealed): share a memfd created with MFD_ALLOW_SEALING or sealed "
               "against shrinking (QEMU: memory-backend-memfd, seal=on)")
