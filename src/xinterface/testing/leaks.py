"""What a test left behind: file descriptors and threads of this process that were not
there before (``/proc/self/fd``, ``threading.enumerate``)."""

from __future__ import annotations

import os
import threading
import time

# Threads that end on their own (a run's last vCPU, a client leaving) get this long.
SETTLE = 2.0


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, or one closed meanwhile
    return out


class Leaks:
    """A snapshot now; :meth:`check` lists what is new since (empty: nothing leaked)."""

    def __init__(self) -> None:
        self._fds = _fds()
        self._threads = set(threading.enumerate())

    def check(self, settle: float = SETTLE) -> list[str]:
        end = time.monotonic() + settle
        while True:
            threads = [t for t in threading.enumerate()
                       if t not in self._threads and t.is_alive()]
            fds = {fd: path for fd, path in _fds().items()
                   if self._fds.get(fd) != path}
            if (not threads and not fds) or time.monotonic() >= end:
                break
            time.sleep(0.02)
        return ([f"fd {fd} -> {path}" for fd, path in sorted(fds.items())]
                + [f"thread {t.name!r}" for t in threads])
