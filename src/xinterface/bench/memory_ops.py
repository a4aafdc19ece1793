"""Cost of the memory services, and of a plain slice of the same mmap (their floor)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..interface import bind
from ..runner.machine import Machine

_MEMORY = 4 << 20
_GPA = 0x100000


def _per_op(op: Callable[[], object], number: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(number):
        op()
    return (time.perf_counter_ns() - start) / number


def sample(kind: str, size: int, number: int) -> float:
    """ns per operation over ``number`` of them: ``copy_from``, ``copy_to``, ``vmap`` (create
    and put), or the floors ``slice_read``, ``slice_write``, ``slice_view`` on the raw mmap."""
    with Machine(memory=_MEMORY, debug_ports=False) as machine:
        intf = bind(machine)
        assert machine.memory is not None
        raw = machine.memory.regions[0].mapping
        view = memoryview(raw)
        data = bytes(size)
        end = _GPA + size

        def copy_to() -> None:
            intf.copy_to(_GPA, data)

        def slice_write() -> None:
            raw[_GPA:end] = data

        ops: dict[str, Callable[[], object]] = {
            "copy_from": lambda: intf.copy_from(_GPA, size),
            "copy_to": copy_to,
            "vmap": lambda: intf.vmap(_GPA, size).put(),
            "slice_read": lambda: raw[_GPA:end],
            "slice_write": slice_write,
            "slice_view": lambda: view[_GPA:end].release(),
        }
        try:
            return _per_op(ops[kind], number)
        finally:
            view.release()
            intf.put()
