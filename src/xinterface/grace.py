"""Grace periods for bus removal, in the spirit of the kernel's SRCU.

Each dispatching thread (a vCPU, the POSTED drainer, the EVENTFD thread) owns a
:class:`ReaderSlot` and bumps its counter on entering and on leaving a dispatch, so an odd
count means "inside". :meth:`Grace.synchronize` waits until every slot that was inside when it
started has left, which is what makes "once deassign returns, no handler of it is running or
will run" true.

Handlers may deassign (the seed deadlocked there), so a thread inside a dispatch that waits
must never wait for a thread that waits for it. Two rules keep every wait cycle-free:

- the caller's own slot is not waited for (a handler may remove itself);
- a slot whose thread is *blocked* (waiting in ``synchronize``, or for a lock taken through
  :meth:`Grace.acquire`, such as the POSTED ring's) is ``syncing``: a caller that is itself
  inside a dispatch counts it as quiescent. That thread is blocked inside a handler and
  re-checks ``live`` before it calls anything else.

The second rule is only for callers inside a dispatch, the only ones that can close a cycle.
A caller outside every dispatch (the main thread, say) waits for syncing slots too, so when
its ``deassign`` returns the handler has really returned (a deassign from the main thread
must never return while a vCPU is still inside the handler).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...


class ReaderSlot:
    """One dispatching thread's position: ``count`` odd while inside a dispatch.

    ``count`` is bumped by :func:`xinterface.iobus.write_in`/``read_in`` and by the compiled
    loop (through the attribute's descriptor, as ``setattr`` would): a ``__slots__`` member.
    """

    __slots__ = ("count", "syncing", "thread_id")

    def __init__(self) -> None:
        self.count = 0
        self.syncing = 0  # > 0 while the thread is blocked in synchronize or acquire
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

    def _mine(self) -> list[ReaderSlot]:
        me = threading.get_ident()
        with self._lock:
            return [s for s in self._slots if s.thread_id == me]

    def inside(self) -> bool:
        """Whether the calling thread is inside a dispatch (running a handler) of this VM."""
        return any(s.count & 1 for s in self._mine())

    def synchronize(self) -> None:
        """Return once every dispatch in progress at the call has finished (see module doc)."""
        me = threading.get_ident()
        with self._lock:
            slots = list(self._slots)
        mine = [s for s in slots if s.thread_id == me]
        in_dispatch = any(s.count & 1 for s in mine)
        waiting = [(s, s.count) for s in slots if s.count & 1 and s.thread_id != me]
        if not waiting:
            return
        for s in mine:
            s.syncing += 1
        try:
            delay = 0.0
            while waiting:
                waiting = [(s, c) for s, c in waiting
                           if s.count == c and not (in_dispatch and s.syncing)]
                if waiting:
                    time.sleep(delay)  # sleep(0) first: handlers are usually microseconds
                    delay = min(delay * 2 or 20e-6, 1e-3)
        finally:
            for s in mine:
                s.syncing -= 1

    def acquire(self, lock: Lock) -> None:
        """Take ``lock``; while blocked for it, this thread's slots count as syncing.

        For a lock that a thread may hold while it runs handlers (the POSTED ring's): a
        handler there may be waiting in ``synchronize`` for this very thread.
        """
        if lock.acquire(blocking=False):
            return
        mine = self._mine()
        for s in mine:
            s.syncing += 1
        try:
            lock.acquire()
        finally:
            for s in mine:
                s.syncing -= 1
