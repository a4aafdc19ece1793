"""EVENTFD delivery: KVM ioeventfd, and the one epoll thread that calls their handlers.

``KVM_IOEVENTFD`` makes a matching guest write signal an eventfd inside the kernel, with no
exit to userspace. An eventfd is a counter: N writes before the reader wakes read as one
value N, so N writes may give fewer handler calls. The handler's payload is empty, or the
datamatch value; ``XIOEventFd.count`` totals the writes read so far.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

from ..grace import Grace

# After handling a wake-up, wait this long before waiting on the fds again (see _run).
COALESCE_SECONDS = 100e-6


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def read_count(fd: int) -> int:
    """The eventfd's counter (and reset it); 0 if nothing was signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class EventLoop:
    """An epoll thread calling ``callback()`` when an fd becomes readable; the callback
    returns how many signals it consumed.

    The thread owns a grace reader slot, so removing an fd waits for a callback in progress.
    """

    def __init__(self, grace: Grace, on_error: Callable[[BaseException], None]) -> None:
        self._grace = grace
        self._on_error = on_error
        self._slot = grace.slot()
        self._epoll = select.epoll()
        self._wake = new_eventfd()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._callbacks: dict[int, Callable[[], int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.coalesce = COALESCE_SECONDS

    def add(self, fd: int, callback: Callable[[], int]) -> None:
        with self._lock:
            self._callbacks[fd] = callback
            self._epoll.register(fd, select.EPOLLIN)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xinterface-eventfd",
                                                daemon=True)
                self._thread.start()

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; on return its callback is not running and never will be."""
        with self._lock:
            if self._callbacks.pop(fd, None) is None:
                return
            self._epoll.unregister(fd)
        self._grace.synchronize()

    def _run(self) -> None:
        slot = self._slot
        slot.thread_id = threading.get_ident()
        while not self._closing:
            busy = False
            for fd, _ in self._epoll.poll():
                if fd == self._wake:
                    read_count(fd)
                    continue
                slot.count += 1
                try:
                    callback = self._callbacks.get(fd)
                    if callback is not None and callback() > 1:
                        busy = True
                except BaseException as exc:  # handed to the machine: it stops and re-raises
                    self._on_error(exc)
                finally:
                    slot.count += 1
            if busy and self.coalesce:
                # Writes are coming faster than one per wake-up: while this thread sleeps
                # here rather than in epoll_wait, a guest write only marks the eventfd
                # ready, without waking anyone (a cross-CPU wake-up per write is what made
                # EVENTFD slower than the C floor). An isolated write (a count of 1) still
                # finds the thread waiting and wakes it at once.
                time.sleep(self.coalesce)

    def close(self) -> None:
        self._closing = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
        self._grace.drop(self._slot)
        self._epoll.close()
        os.close(self._wake)
