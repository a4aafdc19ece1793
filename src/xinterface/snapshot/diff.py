"""Diff snapshots: only the pages the guest wrote since the machine's last snapshot.

After a snapshot, the machine's RAM slots log dirty pages (``KVM_MEM_LOG_DIRTY_PAGES``);
the next snapshot with ``diff=True`` reads and clears each slot's log
(``KVM_GET_DIRTY_LOG``) and writes those pages only, at their offsets in a sparse file of
the region's size. Its manifest names its parent; a restore maps the parent's memory, then
each run of dirty pages of the diff over it, copy-on-write as well.

KVM's dirty log sees the guest's writes only: bytes the VMM itself writes into guest RAM (a
virtio device completing a request, ``GuestMemory.write``) are not in it, so a diff is
exact for machines whose devices do not write guest memory (docs/snapshot.md).
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from collections.abc import Iterator

from ..kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE
from ..memory import MemoryRegion, mmap_address
from ..runner.machine import Machine
from .format import fail
from .memory_files import write_pages

# The machine's last snapshot, and whether its slots log dirty pages since.
_last: weakref.WeakKeyDictionary[Machine, str] = weakref.WeakKeyDictionary()


def last_snapshot(machine: Machine) -> str | None:
    return _last.get(machine)


def start_logging(machine: Machine, directory: str) -> None:
    """From now on the guest's writes to RAM are logged; ``directory`` is the parent of the
    next diff. The log is read once, to clear what came before."""
    memory = machine.memory
    assert memory is not None
    vmfd = machine.vm.vmfd
    for region in memory.regions:
        if not region.readonly:
            vmfd.set_user_memory_region(region.slot, region.gpa, region.size,
                                        mmap_address(region.mapping), KVM_MEM_LOG_DIRTY_PAGES)
            dirty_runs(machine, region)
    _last[machine] = directory


def dirty_runs(machine: Machine, region: MemoryRegion) -> list[list[int]]:
    """``[first page, page count]`` runs of the pages of ``region`` written since the last
    call (the call clears the log)."""
    pages = region.size // PAGE_SIZE
    bitmap = (ctypes.c_uint64 * ((pages + 63) // 64))()
    machine.vm.vmfd.get_dirty_log(region.slot, bitmap)
    return list(_runs(bitmap))


def _runs(bitmap: ctypes.Array[ctypes.c_uint64]) -> Iterator[list[int]]:
    start = -1
    for word_index, word in enumerate(bitmap):
        if not word and start < 0:
            continue
        for bit in range(64):
            page = word_index * 64 + bit
            if word >> bit & 1:
                if start < 0:
                    start = page
            elif start >= 0:
                yield [start, page - start]
                start = -1
    if start >= 0:
        yield [start, len(bitmap) * 64 - start]


def write_diff(region: MemoryRegion, runs: list[list[int]], path: str) -> int:
    """The pages of ``runs`` to a sparse file of the region's size; bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    written = 0
    try:
        os.ftruncate(fd, region.size)
        for first, count in runs:
            written += write_pages(fd, region, [first * PAGE_SIZE], count * PAGE_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def check_runs(runs: object, size: int, what: str) -> list[tuple[int, int]]:
    """A manifest's runs, checked against the region's pages (they come from a file)."""
    pages = size // PAGE_SIZE
    out: list[tuple[int, int]] = []
    if not isinstance(runs, list):
        raise fail(errno.EINVAL, f"manifest: dirty runs of {what} are not a list")
    for run in runs:
        if not (isinstance(run, list) and len(run) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in run)
                and run[0] >= 0 and run[1] > 0 and run[0] + run[1] <= pages):
            raise fail(errno.EINVAL, f"manifest: dirty run {run!r} of {what} is outside its "
                       f"{pages} pages")
        out.append((run[0], run[1]))
    return out
