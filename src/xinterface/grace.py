"""Grace periods for bus removal, in the spirit of the kernel's SRCU.

Each dispatching thread (a vCPU) owns a :class:`ReaderSlot` and bumps its counter on entering
and on leaving a dispatch, so an odd count means "inside". :meth:`Grace.synchronize` waits
until every slot that was inside when it started has left, which is what makes "once
deassign returns, no vCPU is inside the removed entry" true.

Two exceptions keep it deadlock-free, since handlers may deassign (the seed deadlocked there):
the caller's own slot is not waited for (a handler may remove itself), and a slot whose
thread is itself waiting in ``synchronize`` counts as quiescent: it is blocked inside a
handler and re-checks ``live`` before calling anything else.
"""

from __future__ import annotations

import threading
import time


class ReaderSlot:
    """One dispatching thread's position: ``count`` odd while inside a dispatch."""

    __slots__ = ("count", "syncing", "thread_id")

    def __init__(self) -> None:
        self.count = 0
        self.syncing = False
        self.thread_id: int | None = None

    def leave_if_inside(self) -> None:
        """For a dispatch cut short by an exception: leave, so removals are not held up."""
        if self.count & 1:
            self.count += 1


class Grace:
    """The set of reader slots of one machine, and the wait for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: list[ReaderSlot] = []

    def slot(self) -> ReaderSlot:
        s = ReaderSlot()
        with self._lock:
            self._slots.append(s)
        return s

    def drop(self, slot: ReaderSlot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)

    def synchronize(self) -> None:
        """Return once every dispatch in progress at the call has finished (see module doc)."""
        me = threading.get_ident()
        with self._lock:
            slots = list(self._slots)
        mine = [s for s in slots if s.thread_id == me]
        waiting = [(s, s.count) for s in slots if s.count & 1 and s.thread_id != me]
        if not waiting:
            return
        for s in mine:
            s.syncing = True
        try:
            delay = 0.0
            while waiting:
                waiting = [(s, c) for s, c in waiting if s.count == c and not s.syncing]
                if waiting:
                    time.sleep(delay)  # sleep(0) first: handlers are usually microseconds
                    delay = min(delay * 2 or 20e-6, 1e-3)
        finally:
            for s in mine:
                s.syncing = False
