"""``--metrics FILE``: the machine's counters as JSON lines, every ``interval`` seconds and
once more at the end (Firecracker's metrics in spirit: one object per line, counters since
the start, so a reader takes differences).

A line: ``{"utc": ..., "elapsed": ..., "exits": {kind: n}, "unclaimed": {kind: n},
"devices": {name: {...}}}``; exits by kind and the accesses no device claimed (``pio_write``,
``mmio_read``, ...) summed over the vCPUs; the board's COM1 (bytes each way) and fw_cfg (DMA
errors); each virtio device's counters (requests, bytes, errors) and its transport's.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..boards.platform import Platform
    from ..runner.machine import Machine

INTERVAL = 1.0


def sample(machine: Machine, platform: Platform | None) -> dict[str, Any]:
    """The counters now (read without locks: each number is a plain int read)."""
    from ..kvm import uapi

    exits: Counter[str] = Counter()
    unclaimed: Counter[str] = Counter()
    for loop in machine.vcpus:
        for code, count in enumerate(loop.counts):
            if count:
                exits[uapi.EXIT_REASON_NAMES.get(code, str(code)).lower()] += count
        unclaimed.update(dict(loop.unclaimed))  # a copy: the vCPU thread may add a key
    devices: dict[str, dict[str, int]] = {}
    if platform is not None:
        devices["uart"] = {"tx_bytes": platform.uart.tx_bytes,
                           "rx_bytes": platform.uart.rx_bytes}
        devices["fw_cfg"] = {"dma_errors": platform.fw_cfg.dma_errors}
    for transport in platform.virtio if platform is not None else ():
        device = transport.device
        counters = dict(device.stats)
        counters.update({f"transport_{k}": v for k, v in transport.stats.items()})
        # Two devices of a kind (two disks) are told apart by their slot order.
        name = device.name if device.name not in devices else f"{device.name}.{len(devices)}"
        devices[name] = counters
    return {"exits": dict(exits), "unclaimed": dict(unclaimed), "devices": devices}


class MetricsWriter:
    """A thread that appends :func:`sample` lines to ``file`` until :meth:`close`, which
    writes the last line. ``platform``: called for the board's devices (built later)."""

    def __init__(self, file: IO[str], machine: Machine,
                 platform: Callable[[], Platform | None], interval: float = INTERVAL) -> None:
        self._file = file
        self._machine = machine
        self._platform = platform
        self._interval = interval
        self._start = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="xinterface-metrics",
                                        daemon=True)
        self._thread.start()

    def _write(self) -> None:
        line = {"utc": time.time(), "elapsed": round(time.monotonic() - self._start, 6),
                **sample(self._machine, self._platform())}
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            self._write()

    def close(self) -> None:
        """Stop the thread and write the final line (before the machine is closed)."""
        if self._done.is_set():
            return
        self._done.set()
        self._thread.join()
        self._write()
