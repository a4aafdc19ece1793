"""Guest memory to files, and files mapped back as guest memory without copying.

Saving writes each region to its own file, leaving holes where the guest's pages are zero
(a fresh guest's RAM is mostly untouched). Restoring maps the file over the region's
host mapping with ``MAP_PRIVATE | MAP_FIXED``: the address KVM's memory slot points at stays
the same, the pages come from the page cache on first touch, and a guest write copies one
page for this machine only (mmap(2)): the file, and every clone mapping it, never sees it.

A diff snapshot writes only the pages KVM's dirty log (``KVM_GET_DIRTY_LOG``) marks as
written since the last snapshot, into a copy of the parent's file.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

from ..kvm.uapi import PAGE_SIZE
from ..memory import MemoryRegion, mmap_address
from .format import fail

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value


def write_region(region: MemoryRegion, path: str) -> None:
    """All of ``region`` to ``path``, zero chunks left as holes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, region.size)
        write_pages(fd, region, range(0, region.size, CHUNK), CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pages(fd: int, region: MemoryRegion, offsets: range | list[int], size: int) -> int:
    """Write ``size`` bytes of ``region`` at each offset to ``fd`` (zero ones skipped in a
    new file); how many bytes were written."""
    written = 0
    mapping = region.mapping
    for offset in offsets:
        data = mapping[offset:offset + size]
        if size == CHUNK and data == _ZERO[:len(data)]:
            continue
        os.pwrite(fd, data, offset)
        written += len(data)
    return written


def map_private(region: MemoryRegion, path: str, size: int,
                runs: list[tuple[int, int]] | None = None) -> None:
    """Put ``path``'s pages under ``region``'s host mapping, copy-on-write: all of them, or
    only the ``(first page, count)`` runs of a diff snapshot.

    ``size`` is what the manifest recorded: a file of another size is refused first.
    """
    if size != region.size:
        raise fail(errno.EINVAL, f"memory file {path}: {size:#x} bytes recorded, the region "
                   f"at gpa {region.gpa:#x} is {region.size:#x}", path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise fail(exc.errno or errno.EIO, f"memory file {path}: {exc.strerror}",
                   path) from None
    try:
        if os.fstat(fd).st_size != size:
            raise fail(errno.EINVAL, f"memory file {path} is {os.fstat(fd).st_size} bytes, "
                       f"the manifest says {size} (truncated?)", path)
        base = mmap_address(region.mapping)
        for offset, length in ([(0, size)] if runs is None else
                               [(first * PAGE_SIZE, count * PAGE_SIZE) for first, count in runs]):
            got = _libc.mmap(base + offset, length, mmap.PROT_READ | mmap.PROT_WRITE,
                             mmap.MAP_PRIVATE | _MAP_FIXED, fd, offset)
            if got == _MAP_FAILED or got != base + offset:
                code = ctypes.get_errno() or errno.ENOMEM
                raise fail(code, f"memory file {path}: mmap failed: {os.strerror(code)}", path)
    finally:
        os.close(fd)


def file_stamp(path: str) -> dict[str, int]:
    """What the manifest records of a memory file: size and modification time."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
