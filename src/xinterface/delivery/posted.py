"""POSTED delivery: KVM's coalesced MMIO/PIO ring, drained into the buses in order.

A write inside a registered zone does not exit: KVM appends ``(addr, len, pio, data)`` to a
ring shared by every vCPU (one page of the vCPU mmap, ``KVM_COALESCED_MMIO_PAGE_OFFSET``;
``first`` is ours to advance, ``last`` the kernel's). When the ring is full KVM exits
normally instead, so nothing is lost. virt/kvm/coalesced_mmio.c accepts any write that lies
entirely inside a zone, whatever its length: a 1-byte write into a 4-byte zone is logged too.
Draining hands every entry to its bus as an ordinary write (``Bus.write``, or the same rule
on the bus's ``routes`` in the compiled drain), so such a write reaches whatever would have
received it (a range device, or the unhandled policy) and an exact ``(addr, length)`` match
reaches its event.

Ordering: the machine drains before handling any other exit on any vCPU, so a later
synchronous access never overtakes an earlier posted write. "Drains" includes waiting for a
drain in progress on another thread (a poller) to finish: :meth:`CoalescedRing.pending` stays
true from the moment a drain takes entries off the ring until their handlers have returned.

Locking: one drain at a time, under ``lock``, which the drainer holds while it runs handlers.
A handler may wait in a grace period for another thread that in turn wants the ring, so the
lock is taken through :meth:`~xinterface.grace.Grace.acquire`: while blocked for it, a thread
counts as quiescent to such a handler (see :mod:`xinterface.grace`).
"""

from __future__ import annotations

import collections
import mmap
import struct
import threading
from collections.abc import Callable

from .. import accel
from ..grace import Grace, ReaderSlot
from ..iobus import Bus
from ..kvm import uapi

_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<QII8s")  # phys_addr, len, pio, data
_RING_OFFSET = uapi.KVM_COALESCED_MMIO_PAGE_OFFSET * uapi.PAGE_SIZE
_ENTRIES_OFFSET = _RING_OFFSET + _HEADER.size
_MAX = uapi.COALESCED_RING_MAX

# (pio, addr, payload) of an entry no handler claimed -> None; raises to stop the machine.
Unclaimed = Callable[[int, int, bytes], None]
# (pio, addr, payload, the exception a handler raised) -> raises what to propagate.
Failed = Callable[[int, int, bytes, BaseException], None]


class CoalescedRing:
    """The VM's ring, read through vCPU 0's mapping, and the lock that serialises draining.

    ``buses``: the PIO and MMIO buses the entries go to (``kvm_coalesced_mmio.pio`` says which).
    """

    def __init__(self, run_mmap: mmap.mmap, grace: Grace, buses: tuple[Bus, Bus]) -> None:
        self._mm = run_mmap
        self._grace = grace
        self._buses = buses
        self._by_pio = (buses[1], buses[0])  # indexed by an entry's pio flag
        self._words = memoryview(run_mmap).cast("I")
        self._first = _RING_OFFSET // 4
        self._last = self._first + 1
        # Reentrant: a handler called from a drain may deassign, which drains again.
        self.lock = threading.RLock()
        self.zones = 0  # registered zones; the exit loop skips the ring check when 0
        self._zones_lock = threading.Lock()
        self.draining = 0  # drains in progress (nested ones included)
        # Entries taken off the ring, not yet dispatched. A drain re-entered from a handler
        # continues from here, so entries are dispatched in ring order, each exactly once.
        self._pending: collections.deque[tuple[int, int, int, bytes]] = collections.deque()
        # The same, for the compiled drain (accel.fastloop), which keeps entries in C.
        fast = accel.fastloop
        self._native_pending = fast.Pending(_MAX) if fast is not None else None

    def release(self) -> None:
        self._words.release()

    def add_zone(self, delta: int) -> None:
        with self._zones_lock:
            self.zones += delta

    def pending(self) -> bool:
        """Entries logged and not yet delivered, or a drain still in its handlers."""
        words = self._words
        return (words[self._first] != words[self._last] or bool(self._pending)
                or self.draining > 0 or bool(self._native_pending))

    def _take(self) -> None:
        """Move every logged entry to ``_pending`` and give the ring's slots back at once."""
        words, mm = self._words, self._mm
        first, last = words[self._first], words[self._last]
        if first == last:
            return
        size = _ENTRY.size
        if first < last:
            chunk = mm[_ENTRIES_OFFSET + first * size : _ENTRIES_OFFSET + last * size]
        else:  # wrapped: the tail of the ring, then its head
            chunk = (mm[_ENTRIES_OFFSET + first * size : _ENTRIES_OFFSET + _MAX * size]
                     + mm[_ENTRIES_OFFSET : _ENTRIES_OFFSET + last * size])
        self._pending.extend(_ENTRY.iter_unpack(chunk))
        # Copied out: the kernel may reuse the slots now (it only reads ``first``).
        words[self._first] = last

    def drain(self, unclaimed: Unclaimed, failed: Failed | None = None, *,
              slot: ReaderSlot | None = None) -> int:
        """Write every entry to its bus in ring order; how many.

        An entry no handler claimed goes to ``unclaimed(pio, addr, payload)`` (the unhandled
        policy); a handler's exception to ``failed(pio, addr, payload, exc)``, which raises
        what to propagate, or, when there is none, propagates as it is.
        ``slot``: a grace slot shared by every thread that drains off the vCPUs (``flush()``):
        entered under the lock, this thread's only while it drains, unless the caller is
        already inside it (a handler's deassign drains again).
        """
        done = 0
        pending = self._pending
        lock = self.lock
        if not lock.acquire(False):
            self._grace.acquire(lock)
        enter = slot is not None and not slot.count & 1
        if enter:
            assert slot is not None
            slot.thread_id = threading.get_ident()
            slot.count += 1
        # Counted before anything leaves the ring, so pending() holds throughout.
        self.draining += 1
        try:
            fast = accel.fastloop
            if fast is not None:
                # The same algorithm in C, its pending entries in _native_pending.
                return int(fast.drain(self._mm, _RING_OFFSET, _MAX, self._native_pending,
                                      *self._buses, unclaimed, failed))
            self._take()
            by_pio = self._by_pio
            while pending:
                addr, length, pio, data = pending.popleft()
                payload = data[:length] if length < 8 else data
                try:
                    claimed = by_pio[1 if pio else 0].write(addr, payload)
                except BaseException as exc:
                    if failed is None:
                        raise
                    failed(pio, addr, payload, exc)
                    raise  # failed() returned: the handler's own exception goes on
                if not claimed:
                    unclaimed(pio, addr, payload)
                done += 1
                if not pending:
                    self._take()
            return done
        finally:
            self.draining -= 1
            if enter:
                assert slot is not None
                slot.count += 1
                # No thread owns the slot between drains: the thread that drained last must
                # not count it as its own later (grace.Grace.acquire).
                slot.thread_id = None
            lock.release()
