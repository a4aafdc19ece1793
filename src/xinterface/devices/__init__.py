"""Device models. Each is an xinterface client: it registers on the buses through the
xinterface in one method and unregisters in another; nothing else touches it."""

from __future__ import annotations

from typing import Protocol


class Output(Protocol):
    """Where a device's output bytes go: a binary file, ``sys.stdout.buffer``, a watcher."""

    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> object: ...
