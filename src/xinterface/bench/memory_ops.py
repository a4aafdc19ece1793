"""Cost of the memory services against a plain slice of the same mmap (the floor)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..machine import Machine
from ..xinterface import bind

SIZES = {"8": 8, "4k": 4096, "1m": 1 << 20}


@dataclass(frozen=True)
class OpResult:
    name: str
    median_ns: float
    floor_ns: float

    @property
    def ratio(self) -> float:
        return self.median_ns / self.floor_ns


def _median_ns(op: Callable[[], object], repeat: int, number: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            op()
        samples.append((time.perf_counter_ns() - start) / number)
    return statistics.median(samples)


def run_memory_ops(repeat: int = 15, quick: bool = False) -> list[OpResult]:
    """copy_from/copy_to of 8 B, 4 KiB and 1 MiB, and vmap creation, each against a slice."""
    results = []
    with Machine(memory=4 << 20) as machine:
        intf = bind(machine)
        assert machine.memory is not None
        raw = machine.memory.regions[0].mapping
        gpa = 0x100000
        for label, size in SIZES.items():
            number = 20 if size >= 1 << 20 else (200 if quick else 2000)
            data = bytes(size)

            def copy_from(s: int = size) -> bytes:
                return intf.copy_from(gpa, s)

            def slice_read(s: int = size) -> bytes:
                return raw[gpa : gpa + s]

            def copy_to(d: bytes = data) -> None:
                intf.copy_to(gpa, d)

            def slice_write(d: bytes = data) -> None:
                raw[gpa : gpa + len(d)] = d

            results.append(OpResult(f"memory.copy_from.{label}",
                                    _median_ns(copy_from, repeat, number),
                                    _median_ns(slice_read, repeat, number)))
            results.append(OpResult(f"memory.copy_to.{label}",
                                    _median_ns(copy_to, repeat, number),
                                    _median_ns(slice_write, repeat, number)))

        def vmap_cycle() -> None:
            intf.vmap(gpa, 4096).put()

        view = memoryview(raw)
        results.append(OpResult(
            "memory.vmap",
            _median_ns(vmap_cycle, repeat, 200 if quick else 2000),
            _median_ns(lambda: view[gpa : gpa + 4096].release(), repeat,
                       200 if quick else 2000)))
        view.release()
        intf.put()
    return results
