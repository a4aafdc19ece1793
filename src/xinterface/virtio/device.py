"""The transport-independent virtio device (virtio 1.2 §2 and §3): status, features, queues,
configuration space, notifications.

A device subclass says what it is (``device_id``, its feature bits, its configuration bytes,
its queue sizes) and serves its queues in :meth:`VirtioDevice.handle`. A transport (virtio-mmio,
virtio-pci) owns the registers and calls the methods under "the transport's side"; the device
calls back only through the ``interrupt`` callable the transport gave it. A device never
touches a transport's registers.

Threads: transport calls come from vCPU threads (and, for notifications, from the event-loop
or ring-draining thread); they are serialised by the device's lock. Processing a queue holds
that queue's lock, which :meth:`reset` takes too, so a reset waits for the processing in
flight and nothing touches the rings after it returns. Lock order: device lock, then queue
locks, then the status lock.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Protocol

from ..devices.persist import (
    State,
    bad_field,
    field_bool,
    field_bytes,
    field_int,
    field_list,
    nested,
)
from ..interface import XInterface
from .chain import VirtqueueError
from .persist import load_queue, save_queue
from .queue import VirtQueue

log = logging.getLogger(__name__)


class Status(enum.IntFlag):
    """§2.1 Device Status Field."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class Interrupt(enum.IntFlag):
    """Why the device interrupts: the bits of virtio-mmio's InterruptStatus (§4.2.2) and of
    virtio-pci's ISR status (§4.1.4.5) alike."""

    USED = 1     # used buffer notification
    CONFIG = 2   # configuration change notification


# §6 Reserved Feature Bits (the ones the core implements).
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
CORE_FEATURES = 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX
# Plain ints for the notify path: IntFlag operations cost a microsecond each.
_DRIVER_OK = int(Status.DRIVER_OK)
_STOPPED = int(Status.FAILED | Status.DEVICE_NEEDS_RESET)



class InterruptFn(Protocol):
    """The transport's interrupt callable: ``kind``, and for a used buffer notification the
    queue whose used ring moved (None: the device does not say), so a transport with a
    vector per queue (virtio-pci's MSI-X) signals that queue's."""

    def __call__(self, kind: Interrupt, queue: int | None = None, /) -> None: ...


class VirtioDevice:
    """Base class of virtio devices. Subclasses set ``device_id`` and implement
    :meth:`handle`; see docs/writing-a-device.md for a complete one.

    ``features``: the device-type feature bits offered (VIRTIO_F_VERSION_1, INDIRECT_DESC and
    EVENT_IDX are added by the core). ``config``: the initial configuration space.
    ``iothread=True`` serves notifications on a thread of the device's own instead of the
    thread that delivered them (a vCPU's, for SYNC).
    """

    device_id: ClassVar[int] = 0
    vendor_id: ClassVar[int] = 0x554D4551  # "QEMU", what Linux and SeaBIOS see elsewhere too

    def __init__(self, *, queue_sizes: Sequence[int] = (256,), features: int = 0,
                 config: bytes = b"", iothread: bool = False) -> None:
        self.features = features
        self.queues = [VirtQueue(i, n) for i, n in enumerate(queue_sizes)]
        self.config = bytearray(config)
        self.config_generation = 0
        self.status = 0
        self.driver_features = 0
        self.legacy = False
        self.error: str | None = None
        self.stats: Counter[str] = Counter()
        self.intf: XInterface | None = None
        self._interrupt: InterruptFn | None = None
        self._lock = threading.RLock()
        self._status_lock = threading.Lock()
        self._iothread = iothread
        self._worker: _Worker | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- what a device type implements -----------------------------------------------------
    def handle(self, queue: VirtQueue) -> None:
        """Serve ``queue``: take every available chain (``for chain in queue``) and give each
        back with ``queue.add_used(chain, bytes_written)``. Raise VirtqueueError (or let
        ``pop`` raise it) for a driver error that breaks the device."""
        raise NotImplementedError

    def validate_features(self, features: int) -> bool:
        """Whether the driver's feature set is acceptable (FEATURES_OK); all offered are."""
        return True

    def activate(self) -> None:
        """DRIVER_OK was set: the driver is ready."""

    def on_reset(self) -> None:
        """The device was reset: drop per-driver state (the queues are reset already)."""

    def doorbell_eventfd(self, index: int) -> int | None:
        """The eventfd queue ``index``'s doorbell signals, or None: the transport delivers
        it to :meth:`notify`. A device served elsewhere (vhost-user) returns the fd its
        server reads, and the guest's doorbell reaches it without this process."""
        return None

    def call_eventfd(self, index: int) -> int | None:
        """The eventfd another process signals for queue ``index``'s used buffer
        notifications, or None. A transport that can hand it to KVM as an interrupt of its
        own (an MSI-X vector's irqfd) does so and calls :meth:`set_call_direct`."""
        return None

    def set_call_direct(self, index: int, direct: bool) -> None:
        """Whether KVM takes queue ``index``'s call eventfd now (the transport bound it as
        an irqfd): while it does, the device must not read that eventfd itself."""

    def config_write(self, offset: int, data: bytes) -> None:
        """The driver wrote the configuration space; read-only by default (writes dropped)."""
        self.stats["config_write_dropped"] += 1

    # --- services for the device type -------------------------------------------------------
    def negotiated(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    def interrupt(self, kind: Interrupt, queue: int | None = None) -> None:
        """Notify the driver: ``kind``, with the queue a used buffer notification is for."""
        if self._interrupt is not None:
            self._interrupt(kind, queue)

    def update_config(self, offset: int, data: bytes) -> None:
        """Change the configuration space: a new generation, and a configuration change
        notification once the driver is running (§2.5)."""
        with self._status_lock:  # a leaf lock: handle() may call this while a reset waits
            self.config[offset:offset + len(data)] = data
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.status & Status.DRIVER_OK:
            self.interrupt(Interrupt.CONFIG)

    def set_needs_reset(self, reason: str) -> None:
        """Enter the error state: DEVICE_NEEDS_RESET, and once DRIVER_OK is set a
        configuration change notification (§2.1.2). Nothing is processed until a reset."""
        with self._status_lock:
            if self.status & Status.DEVICE_NEEDS_RESET:
                return
            self.status = int(self.status | Status.DEVICE_NEEDS_RESET)
            self.error = reason
            running = self.status & Status.DRIVER_OK
        self.stats["needs_reset"] += 1
        log.warning("%s: device needs reset: %s", self.name, reason)
        if running:
            try:
                self.interrupt(Interrupt.CONFIG)
            except OSError as exc:
                # The transport's line is gone (the machine closing, say). The device is
                # already stopped and this is how it reports its own failure: there is
                # nobody left to raise to, so the caller (a worker's error path) goes on.
                self.stats["interrupt_failed"] += 1
                log.warning("%s: could not notify the driver: %s", self.name, str(exc))

    @property
    def running(self) -> bool:
        """DRIVER_OK and neither FAILED nor DEVICE_NEEDS_RESET: queues may be served."""
        s = self.status
        return bool(s & _DRIVER_OK) and not s & _STOPPED

    def process(self, queue: VirtQueue) -> None:
        """Serve ``queue`` now, on this thread: :meth:`handle` with driver notifications off
        while it runs, then a used buffer notification if the driver wants one."""
        with queue.lock:
            if not (queue.ready and self.running):
                return
            queue.owner = threading.get_ident()
            queue.batching = True
            used = queue.next_used
            try:
                while True:
                    queue.set_notification(False)
                    taken = queue.next_avail
                    self.handle(queue)
                    # Every chain of this round visible with one used.idx store (§2.7.8.2:
                    # the elements were written before it).
                    queue.publish_used()
                    if not self.running:
                        return
                    if not queue.enable_notification() or queue.next_avail == taken:
                        break
                if queue.next_used != used and queue.needs_interrupt():
                    self.interrupt(Interrupt.USED, queue.index)
            except VirtqueueError as exc:
                self.set_needs_reset(str(exc))
            finally:
                # The chains served before a broken one (or a device bug) are used still.
                queue.publish_used()
                queue.batching = False
                queue.owner = None

    # --- the transport's side ---------------------------------------------------------------
    def connect(self, intf: XInterface, interrupt: InterruptFn, *, legacy: bool = False) -> None:
        """Called by the transport: guest memory through ``intf``, interrupts to ``interrupt``.
        ``legacy``: a legacy (virtio 0.9.5) transport; VERSION_1 is not offered."""
        self.intf = intf
        self._interrupt = interrupt
        self.legacy = legacy

    def disconnect(self) -> None:
        self.reset()
        self.intf = None
        self._interrupt = None

    @property
    def device_features(self) -> int:
        """Every feature bit offered (64-bit)."""
        offered = self.features | CORE_FEATURES
        if self.legacy:
            return offered & 0xFFFFFFFF
        return offered | 1 << VIRTIO_F_VERSION_1

    def set_driver_features(self, word: int, value: int) -> None:
        """Bits ``32*word`` to ``32*word+31`` of the driver's features; ignored once
        FEATURES_OK is set (§3.1.1: features are fixed from then on)."""
        with self._lock:
            if self.status & Status.FEATURES_OK or (self.legacy and word):
                self.stats["feature_write_dropped"] += 1
                return
            shift = 32 * word
            mask = 0xFFFFFFFF << shift
            self.driver_features = self.driver_features & ~mask | (value & 0xFFFFFFFF) << shift

    def features_acceptable(self) -> bool:
        features = self.driver_features
        if features & ~self.device_features:
            return False   # §2.2: the driver accepts only features the device offered
        if not self.legacy and not features >> VIRTIO_F_VERSION_1 & 1:
            return False   # §6.1: a modern device may refuse to work without VERSION_1
        return self.validate_features(features)

    def set_status(self, value: int) -> None:
        """The driver wrote the device status: 0 resets; the other bits only accumulate
        (§2.1.1: the driver never clears a bit), each step checked (§3.1.1)."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        with self._lock:
            old = self.status
            new = old | value & ~Status.DEVICE_NEEDS_RESET  # that bit is the device's
            added = new & ~old
            if added & Status.FEATURES_OK and (self.legacy or not self.features_acceptable()
                                               or not new & Status.DRIVER):
                new &= ~Status.FEATURES_OK
                self.stats["features_refused"] += 1
            if added & Status.DRIVER_OK:
                if self.legacy:
                    self.driver_features &= self.device_features
                elif not new & Status.FEATURES_OK:
                    new &= ~Status.DRIVER_OK
                    self.stats["driver_ok_refused"] += 1
            starting = bool(new & ~old & Status.DRIVER_OK)
            if starting:
                # The features are final now (legacy: just now): the queues follow them
                # before any notification can be served.
                for q in self.queues:
                    self._queue_features(q)
            with self._status_lock:
                self.status = int(new | self.status & Status.DEVICE_NEEDS_RESET)
            if starting:
                if self.status & Status.DEVICE_NEEDS_RESET:
                    # Broken during set-up: tell the driver now that it listens (§2.1.2).
                    self.interrupt(Interrupt.CONFIG)
                    return
                if self._iothread:
                    self._worker = _Worker(self)
                self.activate()

    def reset(self) -> None:
        """Device reset (§2.4): waits for processing in flight, then every queue, the status,
        the features and the error state are back to their initial values.

        From :meth:`handle` itself (a callback of the device closing it, on the thread
        serving a queue) the reset does not wait for that queue, which this thread is
        serving: the queue is reset under the handler, whose next ``pop`` finds nothing and
        whose ``add_used`` gives nothing back (a reset returns every buffer to the driver).
        """
        with self._lock:
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.stop()
            me = threading.get_ident()
            others = [q for q in self.queues if q.owner != me]
            for q in others:
                q.lock.acquire()
            try:
                for q in self.queues:
                    q.reset()
                with self._status_lock:
                    self.status = 0
                    self.driver_features = 0
                    self.error = None
                self.on_reset()
            finally:
                for q in others:
                    q.lock.release()

    def _queue_features(self, queue: VirtQueue) -> None:
        queue.event_idx = self.negotiated(VIRTIO_F_EVENT_IDX)
        queue.indirect = self.negotiated(VIRTIO_F_INDIRECT_DESC)

    def queue_max_size(self, index: int) -> int:
        """QueueSizeMax: 0 for a queue that does not exist."""
        return self.queues[index].max_size if 0 <= index < len(self.queues) else 0

    def set_queue_ready(self, index: int, ready: bool) -> None:
        """Enable or disable queue ``index`` with the configuration the transport wrote. A
        configuration the device cannot use (size not a power of two or above the maximum,
        misaligned or non-RAM rings) puts the device in the error state."""
        if not 0 <= index < len(self.queues):
            return
        q = self.queues[index]
        with self._lock:
            if not ready:
                with q.lock:
                    q.ready = False
                    q.unmap()
                    q.next_avail = q.next_used = 0
                return
            if q.ready:
                return
            intf = self.intf
            if intf is None:
                return
            with q.lock:
                self._queue_features(q)
                try:
                    q.map(intf)
                except VirtqueueError as exc:
                    self.set_needs_reset(str(exc))
                    return
                q.ready = True

    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the configuration space; zeros past its end."""
        data = bytes(self.config[offset:offset + size]) if offset >= 0 else b""
        return data + bytes(size - len(data))

    def write_config(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > len(self.config):
            self.stats["config_write_dropped"] += 1
            return
        with self._lock:
            self.config_write(offset, data)

    def notify(self, index: int) -> None:
        """The driver notified queue ``index`` (the transport decoded the doorbell). A queue
        that does not exist or is not ready, or a device not running, ignores it."""
        queues = self.queues
        if not 0 <= index < len(queues) or not queues[index].ready or not self.running:
            self.stats["notify_ignored"] += 1
            return
        self.stats["notify"] += 1
        worker = self._worker
        if worker is not None:
            worker.kick(index)
        else:
            self.process(queues[index])

    # --- snapshot: what each device type's save()/load() builds on -------------------------
    # Not save()/load() themselves: a device type says it can be saved by having them
    # (xinterface.devices.persist), and one served elsewhere (vhost-user) cannot.
    def save_state(self) -> State:
        """The transport-independent state: status, the driver's features, the interface
        (legacy or not), the configuration space and its generation, the error state, and
        every queue (:mod:`.persist`)."""
        with self._lock:
            queues = []
            for q in self.queues:
                with q.lock:   # not mid-way through a round of processing (an iothread's)
                    queues.append(save_queue(q))
            return {"status": self.status, "driver_features": self.driver_features,
                    "legacy": self.legacy, "config": self.config.hex(),
                    "config_generation": self.config_generation, "error": self.error,
                    "queues": queues}

    def load_state(self, state: State) -> None:
        """Reset, then take ``state`` (connected to its transport, before any vCPU runs);
        checked as the driver's writes are: ``EINVAL`` naming the field (``queues[0].size``,
        ``driver_features``)."""
        status = field_int(state, "status", 0, 0xFF)
        legacy = field_bool(state, "legacy")
        features = field_int(state, "driver_features", 0, (1 << 64) - 1)
        config = field_bytes(state, "config", len(self.config))
        generation = field_int(state, "config_generation", 0, 0xFFFFFFFF)
        error = state.get("error")
        if error is not None and not (isinstance(error, str) and len(error) <= 4096):
            raise bad_field("error", error, "is not a reason (text) or null")
        queues = field_list(state, "queues", len(self.queues))
        self.reset()
        try:
            with self._lock:
                self.legacy = legacy
                if features & ~self.device_features:
                    raise bad_field("driver_features", features, "holds features the device "
                                    "does not offer")
                if status & Status.DRIVER_OK and not (legacy or status & Status.FEATURES_OK):
                    raise bad_field("status", status, "has DRIVER_OK without FEATURES_OK")
                for i, (q, item) in enumerate(zip(self.queues, queues, strict=True)):
                    with nested(f"queues[{i}]"):
                        if not isinstance(item, dict):
                            raise bad_field("state", item, "is not a table")
                        load_queue(q, item, self.intf)
                self.driver_features = features
                self.config[:] = config
                self.config_generation = generation
                self.error = error
                self.status = status
                if self.running and self._iothread:
                    self._worker = _Worker(self)
        except BaseException:
            self.reset()
            raise

    def restored(self) -> None:
        """The machine around it is restored (memory, vCPUs): serve what the driver had made
        available before the snapshot and the device had not taken yet, since its doorbell
        rang before (and may not ring again: EVENT_IDX)."""
        if self.running:
            for q in self.queues:
                if q.ready:
                    self.notify(q.index)

    def __repr__(self) -> str:
        return f"{self.name}(id={self.device_id}, status={Status(self.status)!r})"


class _Worker:
    """A device's own thread: notifications are queued to it and served in order."""

    def __init__(self, device: VirtioDevice) -> None:
        self.device = device
        self._cv = threading.Condition()
        self._pending: list[int] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"virtio-{device.name}",
                                        daemon=True)
        self._thread.start()

    def kick(self, index: int) -> None:
        with self._cv:
            if index not in self._pending:
                self._pending.append(index)
                self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        device = self.device
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                pending, self._pending = self._pending, []
            for index in pending:
                try:
                    device.process(device.queues[index])
                except Exception as exc:  # a device bug: the device breaks, the VMM goes on
                    log.exception("%s: queue %d", device.name, index)
                    device.set_needs_reset(f"{type(exc).__name__} serving queue {index}: {exc}")
