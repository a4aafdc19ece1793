"""Diff snapshots: only the pages that changed since the machine's last snapshot.

A diff is found by comparing each region with what its parent snapshot holds (its memory
files, layered as a restore maps them, mapped read-only copy-on-write: no copy), 1 MiB at a
time and then page by page inside a chunk that differs; the changed pages are written at
their offsets in a sparse file of the region's size, and the manifest lists them as runs.
This reads the region and the parent's files once, and writes only the changed pages.

KVM's dirty log (``KVM_GET_DIRTY_LOG``) was the first choice, but under kvm_pvm it missed
the guest's writes in about one run in ten (docs/snapshot.md), and it never sees what the
VMM writes into guest RAM (a virtio device completing a request); a comparison sees both.
"""

from __future__ import annotations

import mmap
import os
import weakref

from ..kvm.uapi import PAGE_SIZE
from ..memory import MemoryRegion
from ..runner.machine import Machine
from .layers import Layer
from .memory_files import CHUNK, map_private, write_pages

# Each machine's last snapshot: the parent of its next diff.
_last: weakref.WeakKeyDictionary[Machine, str] = weakref.WeakKeyDictionary()


def last_snapshot(machine: Machine) -> str | None:
    return _last.get(machine)


def remember(machine: Machine, directory: str) -> None:
    _last[machine] = directory


def changed_runs(region: MemoryRegion, parent: list[Layer]) -> list[list[int]]:
    """``[first page, count]`` runs of the pages of ``region`` that differ from ``parent``."""
    scratch = mmap.mmap(-1, region.size, mmap.MAP_PRIVATE)
    shadow = MemoryRegion(region.gpa, region.size, -1, False, -1, scratch, memoryview(scratch))
    try:
        for file, size, layer_runs in parent:
            map_private(shadow, file, size, layer_runs)
        pages: list[int] = []
        mapping = region.mapping
        for chunk in range(0, region.size, CHUNK):
            end = min(chunk + CHUNK, region.size)
            if mapping[chunk:end] == scratch[chunk:end]:
                continue
            pages += [offset // PAGE_SIZE for offset in range(chunk, end, PAGE_SIZE)
                      if mapping[offset:offset + PAGE_SIZE] != scratch[offset:offset + PAGE_SIZE]]
    finally:
        shadow.view.release()
        scratch.close()
    runs: list[list[int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1][1] += 1
        else:
            runs.append([page, 1])
    return runs


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
