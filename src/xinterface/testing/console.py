"""An expect-style console: a device's output kept as it comes (it is an ``Output``), waited
on by a test; what the guest typed back goes through ``send``."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 30.0


class Console:
    """``expect(b"login:")`` waits until the text appears after what earlier expects
    consumed; a timeout is an ``AssertionError`` that shows everything seen. ``send(data)``
    types into the guest once the console is connected to a device's receive side."""

    def __init__(self, name: str = "console") -> None:
        self.name = name
        self.feed: Callable[[bytes], None] | None = None
        self._seen = bytearray()
        self._mark = 0
        self._cond = threading.Condition()
        self.closed = False

    # --- the device's output ------------------------------------------------------------
    def write(self, data: bytes, /) -> int:
        with self._cond:
            self._seen += data
            self._cond.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """No more output will come (the run ended): an expect fails at once."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # --- the test's side -----------------------------------------------------------------
    @property
    def seen(self) -> bytes:
        """Everything the device wrote so far."""
        with self._cond:
            return bytes(self._seen)

    def expect(self, pattern: bytes | re.Pattern[bytes],
               timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait for ``pattern`` (bytes, or a compiled bytes regex) after the last match;
        what matched. ``AssertionError`` with the output seen when ``timeout`` seconds pass
        or the run ends first."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._seen, self._mark)
                if match is not None:
                    self._mark = match.end()
                    return match.group(0)
                left = end - time.monotonic()
                if left <= 0 or self.closed:
                    why = "the run ended" if self.closed else f"{timeout:g} s passed"
                    raise AssertionError(
                        f"{self.name}: {regex.pattern!r} did not appear ({why}); after the "
                        f"last match it showed:\n{bytes(self._seen[self._mark:])!r}\n"
                        f"everything seen ({len(self._seen)} bytes):\n{bytes(self._seen)!r}")
                self._cond.wait(left)

    def send(self, data: bytes | str) -> None:
        """Type ``data`` into the guest (a str is UTF-8)."""
        if self.feed is None:
            raise AssertionError(f"{self.name}: nothing to type into (no UART on this "
                                 "machine)")
        self.feed(data.encode() if isinstance(data, str) else data)
