"""Where each piece of a direct kernel boot goes in guest RAM, checked before anything is written.

Every piece (zero page, command line, kernel, initrd, tables) is claimed by name; a claim that
leaves guest RAM or overlaps an earlier one is refused with one error naming both pieces, so
a malformed image never leaves a half-written guest behind.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ...errors import XInterfaceError
from ...memory import GuestMemory


@dataclass(frozen=True)
class Piece:
    name: str
    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


class Placement:
    """The claimed ranges of one load, and the writes that go with them."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.pieces: list[Piece] = []
        self._writes: list[tuple[int, bytes]] = []

    def claim(self, name: str, gpa: int, size: int, *, argument: str) -> Piece:
        """Reserve ``[gpa, gpa+size)`` for ``name``; ``argument`` is what the caller passed
        that made it (named in the error)."""
        if size <= 0:
            raise XInterfaceError(errno.EINVAL, f"{name}: empty ({size} bytes)",
                                  argument=argument, value=size)
        if not self.is_ram(gpa, size):
            raise XInterfaceError(
                errno.ENOMEM, f"{name} ({size:#x} bytes at gpa {gpa:#x}) does not fit in guest "
                f"RAM ({self.memory.size:#x} bytes)", argument=argument, value=size)
        for other in self.pieces:
            if gpa < other.end and other.gpa < gpa + size:
                raise XInterfaceError(
                    errno.EINVAL, f"{name} (gpa {gpa:#x}-{gpa + size - 1:#x}) overlaps the "
                    f"{other.name} (gpa {other.gpa:#x}-{other.end - 1:#x})",
                    argument=argument, value=gpa)
        piece = Piece(name, gpa, size)
        self.pieces.append(piece)
        return piece

    def is_ram(self, gpa: int, size: int) -> bool:
        """Whether ``[gpa, gpa+size)`` is writable guest RAM (regions may be adjacent)."""
        cur, end = gpa, gpa + size
        while cur < end:
            region = self.memory.region_at(cur) if cur >= 0 else None
            if region is None or region.readonly:
                return False
            cur = region.end
        return True

    def free_below(self, limit: int, size: int, bottom: int, align: int) -> int | None:
        """The highest ``align``-aligned gpa at or above ``bottom`` whose ``size`` bytes end by
        ``limit``, lie in one RAM region and overlap no claim; None when there is none."""
        ram = sorted((r for r in self.memory.regions if not r.readonly),
                     key=lambda r: r.end, reverse=True)
        for region in ram:
            gpa = (min(region.end, limit) - size) // align * align
            low = max(region.gpa, bottom)
            while gpa >= low:
                blocker = next((p for p in self.pieces if gpa < p.end and p.gpa < gpa + size),
                               None)
                if blocker is None:
                    return gpa
                gpa = (blocker.gpa - size) // align * align
        return None

    def write(self, gpa: int, data: bytes) -> None:
        """Queue ``data`` for ``gpa``; it must lie in a claimed piece."""
        if not any(p.gpa <= gpa and gpa + len(data) <= p.end for p in self.pieces):
            raise AssertionError(f"write of {len(data)} bytes at {gpa:#x} outside every claim")
        self._writes.append((gpa, data))

    def commit(self) -> None:
        """Write every queued piece to guest memory (after all claims succeeded)."""
        for gpa, data in self._writes:
            self.memory.write(gpa, data)
        self._writes.clear()
