"""Where device output goes, and a tee that notices a text in it (``--until``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Output(Protocol):
    """Where a device's output bytes go: a binary file, ``sys.stdout.buffer``, a watcher."""

    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...


class Until:
    """A byte stream that forwards writes and calls ``on_match`` once ``text`` has appeared."""

    def __init__(self, out: Output, text: bytes, on_match: Callable[[], None]) -> None:
        self.out = out
        self.text = text
        self.matched = False
        self._on_match = on_match
        self._tail = b""

    def write(self, data: bytes, /) -> object:
        n = self.out.write(data)
        if not self.matched and self.text:
            seen = self._tail + data
            if self.text in seen:
                self.matched = True
                self.out.flush()
                self._on_match()
            self._tail = seen[-(len(self.text) - 1):] if len(self.text) > 1 else b""
        return n

    def flush(self) -> object:
        return self.out.flush()
