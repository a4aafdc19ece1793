"""The simplest dispatch: one handler per exact address. Replaced by the I/O bus later."""

from __future__ import annotations

from collections.abc import Callable

WriteHandler = Callable[[bytes], None]
ReadHandler = Callable[[int], bytes]


class PortTable:
    """Handlers by exact address; an access nobody claims returns False / None."""

    def __init__(self) -> None:
        self._writes: dict[int, WriteHandler] = {}
        self._reads: dict[int, ReadHandler] = {}

    def add(self, addr: int, *, write: WriteHandler | None = None,
            read: ReadHandler | None = None) -> None:
        if write is not None:
            self._writes[addr] = write
        if read is not None:
            self._reads[addr] = read

    def write(self, addr: int, data: bytes) -> bool:
        handler = self._writes.get(addr)
        if handler is None:
            return False
        handler(data)
        return True

    def read(self, addr: int, size: int) -> bytes | None:
        handler = self._reads.get(addr)
        return None if handler is None else handler(size)
