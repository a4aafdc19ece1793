"""``--trace``: a bus wrapper that prints every guest access as it goes through."""

from __future__ import annotations

from typing import TextIO

from ..iobus import Bus, Routes
from ..kvm.exits import Space


class TracingBus:
    """Forwards to ``bus`` and prints one line per access to ``out``."""

    def __init__(self, bus: Bus, space: Space | str, out: TextIO) -> None:
        self._bus = bus
        self._space = Space(space)
        self._out = out
        self._width = 4 if self._space is Space.PIO else 8

    @property
    def space(self) -> Space:
        return self._space

    @property
    def routes(self) -> Routes | None:
        """None: the compiled loop must call :meth:`write`/:meth:`read`, to print each access."""
        return None

    def _line(self, kind: str, addr: int, size: int, data: bytes | None, fate: str) -> None:
        payload = data.hex() if data is not None else "-"
        self._out.write(f"{self._space:<4} {kind:<5} {addr:#0{self._width + 2}x} size {size} "
                        f"data {payload} {fate}\n")

    def write(self, addr: int, data: bytes) -> bool:
        claimed = self._bus.write(addr, data)
        self._line("write", addr, len(data), data, "claimed" if claimed else "unhandled")
        return claimed

    def read(self, addr: int, size: int) -> bytes | None:
        value = self._bus.read(addr, size)
        self._line("read", addr, size, value, "claimed" if value is not None else "unhandled")
        return value
