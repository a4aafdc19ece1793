# The compiled exit loop (_fastloop.c); see xinterface.accel and xinterface.runner.vcpu_loop.
import mmap
from collections.abc import Callable
from typing import Any

STOPPING: int
UNHANDLED: int

class ExitLoop:
    def __init__(
        self,
        fd: int,
        run: mmap.mmap,
        owner: Any,
        loop: Any,
        counts: list[int],
        slot: Any,
        ring: Any,
        drain: Callable[[Any], None],
        pio_bus: Any,
        mmio_bus: Any,
    ) -> None: ...
    def run(self) -> int: ...
    @property
    def handled(self) -> int: ...

class Pending:
    def __init__(self, entries: int) -> None: ...
    def __len__(self) -> int: ...

def drain(
    run: mmap.mmap,
    offset: int,
    entries: int,
    pending: Pending,
    pio_bus: Any,
    mmio_bus: Any,
    unclaimed: Callable[[int, int, bytes], None],
    failed: Callable[[int, int, bytes, BaseException], None] | None,
) -> int: ...
