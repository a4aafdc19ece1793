"""The memory files a snapshot's regions are made of: a full snapshot's, under those of each
diff on top of it, each checked (size, modification time, runs inside the region)."""

from __future__ import annotations

import errno
import os
from typing import Any

from ..checks import is_int
from ..kvm.uapi import PAGE_SIZE
from .format import fail, read_manifest


def check_machine(record: object) -> tuple[int, bool, bool, list[tuple[int, int, bool]]]:
    if not isinstance(record, dict):
        raise fail(errno.EINVAL, "manifest: machine is not a table")
    vcpus, irqchip, strict = record.get("vcpus"), record.get("irqchip"), record.get("strict")
    regions = record.get("regions")
    if not is_int(vcpus) or not 1 <= vcpus <= 1024 or not isinstance(irqchip, bool) \
            or not isinstance(strict, bool) or not isinstance(regions, list) or not regions:
        raise fail(errno.EINVAL, "manifest: machine record is malformed")
    out = []
    for r in regions:
        if not (isinstance(r, list) and len(r) == 3 and is_int(r[0]) and is_int(r[1])
                and isinstance(r[2], bool)):
            raise fail(errno.EINVAL, f"manifest: memory region {r!r} is malformed")
        out.append((r[0], r[1], r[2]))
    return vcpus, irqchip, strict, out


# One memory file of a region: path, size, and the dirty runs of a diff (None: all pages).
Layer = tuple[str, int, "list[tuple[int, int]] | None"]
MAX_DIFFS = 64  # a chain of diffs longer than this is refused, so a loop of parents ends


def memory_layers(directory: str, body: dict[str, Any],
                  regions: list[tuple[int, int, bool]], depth: int = 0) -> list[list[Layer]]:
    """Per region, the files to map in order: the parent's (recursively), then this one's."""
    memory = body.get("memory")
    if not isinstance(memory, list) or len(memory) != len(regions):
        raise fail(errno.EINVAL, f"manifest of {directory}: memory does not list every region")
    parent = body.get("parent")
    if parent is None:
        layers: list[list[Layer]] = [[] for _ in regions]
    else:
        if not isinstance(parent, str) or depth >= MAX_DIFFS:
            raise fail(errno.EINVAL, f"manifest of {directory}: parent {parent!r} is not a "
                       f"snapshot directory (or diffs chain deeper than {MAX_DIFFS})")
        parent_body = read_manifest(parent)
        _, _, _, parent_regions = check_machine(parent_body.get("machine"))
        if parent_regions != regions:
            raise fail(errno.EINVAL, f"snapshot {directory}: its parent {parent} has another "
                       "memory layout")
        layers = memory_layers(parent, parent_body, regions, depth + 1)
    for stack, entry, (gpa, size, _) in zip(layers, memory, regions, strict=True):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or os.path.basename(name) != name or entry.get("gpa") != gpa:
            raise fail(errno.EINVAL, f"manifest: memory entry {entry!r} is malformed")
        file = os.path.join(directory, name)
        try:
            st = os.stat(file)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO, f"memory file {file}: {exc.strerror}",
                       file) from None
        if st.st_size != entry.get("size") or st.st_size != size:
            raise fail(errno.EINVAL, f"memory file {file} is {st.st_size} bytes, the snapshot "
                       f"wrote {entry.get('size')} (truncated?)", file)
        if st.st_mtime_ns != entry.get("mtime_ns"):
            raise fail(errno.EINVAL, f"memory file {file} changed after the snapshot (its "
                       "modification time differs; copy snapshots with cp -a)", file)
        runs = None if parent is None else check_runs(entry.get("runs"), size, file)
        stack.append((file, size, runs))
    return layers


def check_runs(runs: object, size: int, what: str) -> list[tuple[int, int]]:
    """A manifest's runs, checked against the region's pages (they come from a file)."""
    pages = size // PAGE_SIZE
    out: list[tuple[int, int]] = []
    if not isinstance(runs, list):
        raise fail(errno.EINVAL, f"manifest: dirty runs of {what} are not a list")
    for run in runs:
        if not (isinstance(run, list) and len(run) == 2 and all(is_int(v) for v in run)
                and run[0] >= 0 and run[1] > 0 and run[0] + run[1] <= pages):
            raise fail(errno.EINVAL, f"manifest: dirty run {run!r} of {what} is outside its "
                       f"{pages} pages")
        out.append((run[0], run[1]))
    return out
