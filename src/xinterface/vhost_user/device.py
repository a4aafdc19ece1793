"""A virtio device served by another process over vhost-user: the proxy a transport
(virtio-pci, virtio-mmio) carries, as QEMU's ``vhost-user-blk-pci`` and cloud-hypervisor's
``vhost_user=true`` disks are.

The transport's registers stay ours: the features offered are the backend's that our
transports support, the configuration space is the backend's (GET_CONFIG), the status and
queue set-up are kept here and told to the backend when the driver sets DRIVER_OK. The data
path does not pass through this process:

- guest memory goes to the backend as the memfds it lives in (SET_MEM_TABLE: our
  guest-physical layout, our mapping addresses, each region's offset in its memfd);
- each queue's doorbell is an ioeventfd whose eventfd is the backend's kick fd
  (:meth:`doorbell_eventfd`): the guest's write reaches the backend without waking us;
- each queue's call fd is the guest's interrupt: where the transport can signal a queue
  without a status bit (virtio-pci with MSI-X enabled, :mod:`xinterface.virtio.pci.msix`)
  it binds the call fd as the irqfd of the queue's vector (:meth:`call_eventfd`,
  :meth:`set_call_direct`) and nothing here reads it; otherwise one thread reads the call
  fds and raises the transport's interrupt for that queue (its ISR/InterruptStatus bit and
  its level line: virtio-mmio's InterruptStatus and virtio-pci's ISR without MSI-X must be
  set before the line rises, which an irqfd alone cannot do).

A backend that dies, closes its socket, replies garbage or stops replying is a device
error: DEVICE_NEEDS_RESET with a configuration change interrupt (§2.1.2); the run goes on.
With ``reconnect`` the relay thread connects again every that many seconds; the backend
that comes back gets the device when the driver next starts it (after a reset).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from typing import ClassVar

from ..delivery.eventfd import new_eventfd, read_count
from ..errors import XInterfaceError
from ..memory import mmap_address
from ..virtio.device import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Interrupt,
    VirtioDevice,
)
from .channel import MESSAGE_TIMEOUT, Disconnected
from .frontend import BackendConnection, connect
from .protocol import MAX_REGIONS, ProtocolError, Region

log = logging.getLogger(__name__)

VIRTIO_F_ANY_LAYOUT = 27
# The transport feature bits our transports implement for a device served elsewhere: split
# rings with indirect descriptors and event indices, virtio 1 (§6). Not ACCESS_PLATFORM (no
# IOMMU), RING_PACKED, NOTIFICATION_DATA (the doorbell carries the queue index only).
TRANSPORT_FEATURES = (1 << VIRTIO_F_ANY_LAYOUT | 1 << VIRTIO_F_INDIRECT_DESC
                      | 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_VERSION_1)
DEVICE_TYPE_BITS = (1 << 24) - 1   # bits 0-23 are the device type's (§6)

_ERRORS = (ProtocolError, Disconnected, OSError)


class VhostUserDevice(VirtioDevice):
    """A device of type ``device_id`` whose backend listens at ``socket_path``. Connected
    (and the handshake done) at construction: ``XInterfaceError`` if there is no socket,
    nobody listens, or the backend lacks what this device type needs. ``timeout``: how
    long a backend may take to reply. ``reconnect``: seconds between attempts to connect
    again after the backend is lost (None: never)."""

    # Per type: the queue sizes, the configuration bytes read from the backend, the device
    # type bits kept (those that need a queue or a register we do not have are dropped).
    kind: ClassVar[str] = ""
    queue_sizes: ClassVar[tuple[int, ...]] = (256,)
    config_size: ClassVar[int] = 0
    type_features: ClassVar[int] = DEVICE_TYPE_BITS
    # The configuration fields (offset, size) a driver may write, forwarded to the backend
    # (SET_CONFIG). A write elsewhere is dropped here, as a device ignores it (§4.1.3.1: a
    # driver writes only those fields), and never reaches a backend that would refuse it.
    writable_config: ClassVar[tuple[tuple[int, int], ...]] = ()

    def __init__(self, socket_path: str, *, timeout: float = MESSAGE_TIMEOUT,
                 reconnect: float | None = None, argument: str = "socket") -> None:
        super().__init__(queue_sizes=self.queue_sizes)
        self.socket_path = socket_path
        self.timeout = timeout
        self.reconnect = reconnect
        self.backend_features = 0
        self.local_config = b""
        self._conn_lock = threading.Lock()
        self._conn: BackendConnection | None = None
        self._started: list[int] = []
        self._closed = False
        self._kicks: list[int] = []
        self._calls: list[int] = []
        self._direct: set[int] = set()    # queues whose call fd KVM takes (an irqfd)
        try:
            for _ in self.queues:
                self._kicks.append(new_eventfd())
                self._calls.append(new_eventfd())
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            self._close_fds()
            raise
        try:
            conn = self._connect(argument)
        except BaseException:
            self._close_fds()
            raise
        self._install(conn)
        self._relay = threading.Thread(target=self._run, name=f"vhost-user-{self.kind}",
                                       daemon=True)
        self._relay.start()

    # --- the backend ------------------------------------------------------------------------
    def _connect(self, argument: str) -> BackendConnection:
        conn = connect(self.socket_path, timeout=self.timeout, argument=argument)
        try:
            config = conn.handshake(config_size=self.config_size)
            self.check_backend(conn)
        except _ERRORS as exc:
            conn.close()
            raise XInterfaceError(getattr(exc, "errno", None) or errno.EPROTO,
                                  f"vhost-user backend {self.socket_path}: {exc}",
                                  argument=argument, value=self.socket_path) from None
        if config:
            self.config[:] = config
        return conn

    def check_backend(self, conn: BackendConnection) -> None:
        """Refuse a backend this device type cannot use (ProtocolError)."""
        if conn.queue_num is not None and conn.queue_num < len(self.queues):
            raise ProtocolError(f"the backend has {conn.queue_num} queues, "
                                f"{len(self.queues)} needed")

    def _install(self, conn: BackendConnection) -> None:
        with self._conn_lock:
            self._conn = conn
            self._started = []
        self.backend_features = conn.features
        self._wake()

    def _lost(self, reason: str) -> None:
        """The backend is gone or broken: drop the connection, enter the error state."""
        with self._conn_lock:
            conn, self._conn = self._conn, None
            self._started = []
        if conn is None:
            return
        self.stats["backend_lost"] += 1
        conn.close()
        self._wake()
        self.set_needs_reset(f"vhost-user backend {self.socket_path}: {reason}")

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- what the transport sees ------------------------------------------------------------
    @property
    def device_features(self) -> int:
        offered = (self.backend_features & (self.type_features | TRANSPORT_FEATURES)
                   | self.local_features())
        return offered & 0xFFFFFFFF if self.legacy else offered

    def local_features(self) -> int:
        """Device type bits this process implements itself (a net's MAC)."""
        return 0

    def legacy_layout_is_modern(self, features: int) -> bool:
        """Whether a legacy driver with ``features`` lays out its buffers exactly as a
        modern one (true of blk and rng)."""
        return True

    def doorbell_eventfd(self, index: int) -> int | None:
        return self._kicks[index] if 0 <= index < len(self._kicks) else None

    def call_eventfd(self, index: int) -> int | None:
        return self._calls[index] if 0 <= index < len(self._calls) else None

    def set_call_direct(self, index: int, direct: bool) -> None:
        """The transport bound (or unbound) queue ``index``'s call fd as an irqfd: the relay
        thread stops (or starts again) reading it. A count left while it was bound to a
        masked vector, or signalled between, is relayed or injected: none is lost."""
        if direct:
            self._direct.add(index)
        else:
            self._direct.discard(index)
        self.stats["call_irqfd_bound" if direct else "call_irqfd_unbound"] += 1
        self._wake()

    def notify(self, index: int) -> None:
        """A doorbell the ioeventfd did not take (another width, the payload path): the
        backend is kicked the same way."""
        if 0 <= index < len(self._kicks) and self.running:
            self.stats["notify_relayed"] += 1
            os.eventfd_write(self._kicks[index], 1)
        else:
            self.stats["notify_ignored"] += 1

    def config_write(self, offset: int, data: bytes) -> None:
        """A driver's write of a writable field goes to the backend (SET_CONFIG), and the
        field then holds what the backend reads back (GET_CONFIG): a backend may keep
        another value. A backend that refuses the write leaves the field as it was."""
        end = offset + len(data)
        writable = any(start <= offset and end <= start + size
                       for start, size in self.writable_config)
        conn = self._conn
        if conn is None or not writable or end > self.config_size:
            self.stats["config_write_dropped"] += 1
            return
        try:
            held = conn.set_config(offset, data, self.config_size)[offset:end]
        except ProtocolError as exc:
            if exc.fatal:
                self._lost(str(exc))
            else:
                self.stats["config_write_refused"] += 1
                log.warning("%s: %s", self.name, exc)
            return
        except _ERRORS as exc:
            self._lost(str(exc))
            return
        self.config[offset:end] = held
        self.stats["config_write"] += 1

    # --- starting and stopping --------------------------------------------------------------
    def activate(self) -> None:
        """DRIVER_OK: the negotiated features, the memory table and every ready ring to the
        backend. Any failure is the device's error state."""
        with self._conn_lock:
            conn = self._conn
        if conn is None:
            self.set_needs_reset(f"vhost-user backend {self.socket_path}: not connected")
            return
        features = self.driver_features & conn.features
        missing = self.driver_features & ~conn.features & ~self.local_features()
        if (self.legacy and conn.features >> VIRTIO_F_VERSION_1 & 1
                and self.legacy_layout_is_modern(features)):
            # A legacy (virtio 0.9.5) driver on our transport, a virtio 1 backend: on a
            # little-endian host the driver's split rings and requests are laid out as a
            # modern driver's (§2.7, and the legacy interface sections of each device type),
            # so the backend is told VERSION_1: libvhost-user's backends (qemu-storage-
            # daemon) refuse a device without it, and drop the connection.
            features |= 1 << VIRTIO_F_VERSION_1
        try:
            if missing:
                raise ProtocolError(f"the backend lacks negotiated features {missing:#x}")
            conn.set_features(features)
            conn.set_mem_table(*self._memory_table())
            for q in self.queues:
                if not q.ready:
                    continue
                desc, used, avail = (self._hva(q.desc_addr), self._hva(q.used_addr),
                                     self._hva(q.avail_addr))
                conn.start_ring(q.index, q.size, 0, desc, used, avail, self._kicks[q.index],
                                self._calls[q.index])
                with self._conn_lock:
                    if self._conn is conn:
                        self._started.append(q.index)
        except _ERRORS as exc:
            self._lost(str(exc))
            return
        self.stats["started"] += 1

    def on_reset(self) -> None:
        """The driver reset the device: every started ring stopped (GET_VRING_BASE), as
        the spec's "Stopping rings" asks; the backend then resets its device."""
        with self._conn_lock:
            conn = self._conn
            started, self._started = self._started, []
        if conn is None or not started:
            return
        try:
            for index in started:
                conn.stop_ring(index)
        except _ERRORS as exc:
            self._lost(str(exc))
            # A reset clears the error state; a backend lost during it is still lost.
        for call in self._calls:
            read_count(call)

    def _memory_table(self) -> tuple[list[Region], list[int]]:
        intf = self.intf
        memory = intf.vm.memory if intf is not None else None
        if memory is None:
            raise ProtocolError("the device has no guest memory")
        regions = list(memory.regions)
        if len(regions) > MAX_REGIONS:
            raise ProtocolError(f"{len(regions)} memory regions, the protocol carries "
                                f"{MAX_REGIONS}")
        return ([Region(r.gpa, r.size, mmap_address(r.mapping), r.offset) for r in regions],
                [r.memfd for r in regions])

    def _hva(self, gpa: int) -> int:
        """This process's address of ``gpa`` (SET_VRING_ADDR takes the frontend's)."""
        intf = self.intf
        memory = intf.vm.memory if intf is not None else None
        region = memory.region_at(gpa) if memory is not None else None
        if region is None:
            raise ProtocolError(f"ring at {gpa:#x} is not in guest memory")
        return mmap_address(region.mapping) + gpa - region.gpa

    # --- the relay thread -------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        """Call fds to interrupts; a hang-up of the socket to the error state; with
        ``reconnect``, a new connection while none is up."""
        while not self._closed:
            conn = self._conn
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            direct = set(self._direct)
            relayed = {call: index for index, call in enumerate(self._calls)
                       if index not in direct}
            for call in relayed:
                poller.register(call, select.POLLIN)
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    poller.register(conn.fileno(), select.POLLRDHUP)
            timeout = None if conn is not None or self.reconnect is None else self.reconnect
            events = poller.poll(None if timeout is None else int(timeout * 1000))
            if self._closed:
                return
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                elif fd in relayed:
                    if read_count(fd) and self.running:
                        self.stats["call"] += 1
                        self.interrupt(Interrupt.USED, relayed[fd])
                elif conn is not None and self._conn is conn:
                    self._lost("the backend closed its socket")
            if not events and self._conn is None and self.reconnect is not None:
                self._try_reconnect()

    def _try_reconnect(self) -> None:
        try:
            conn = self._connect("socket")
        except XInterfaceError:
            self.stats["reconnect_failed"] += 1
            return
        if self._closed:
            conn.close()
            return
        self.stats["reconnected"] += 1
        log.info("%s: vhost-user backend %s is back", self.name, self.socket_path)
        self._install(conn)

    # --- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the relay thread, close the connection and every fd; harmless twice."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        if threading.current_thread() is not self._relay:
            self._relay.join()
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._kicks + self._calls:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._kicks, self._calls = [], []
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.socket_path!r})"


BLK_WRITEBACK = 0x20   # struct virtio_blk_config's writeback byte (§5.2.4)


class VhostUserBlk(VhostUserDevice):
    """virtio-blk (§5.2) served by a vhost-user-blk backend (qemu-storage-daemon's export,
    ``xinterface serve blk``). One queue: VIRTIO_BLK_F_MQ is not offered."""

    device_id = 2
    kind = "blk"
    config_size = 60   # struct virtio_blk_config up to write_zeroes_may_unmap (§5.2.4)
    type_features = DEVICE_TYPE_BITS & ~(1 << 12)   # VIRTIO_BLK_F_MQ
    writable_config = ((BLK_WRITEBACK, 1),)   # with VIRTIO_BLK_F_CONFIG_WCE (§5.2.6.1)


VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
MAC_SIZE = 6
# Features that need the control queue, more queue pairs or a status register that this
# proxy does not have (§5.1.3): STATUS 16, CTRL_VQ 17, CTRL_RX 18, CTRL_VLAN 19,
# GUEST_ANNOUNCE 21, MQ 22, CTRL_MAC_ADDR 23.
_NET_DROPPED = sum(1 << bit for bit in (16, 17, 18, 19, 21, 22, 23))


class VhostUserNet(VhostUserDevice):
    """virtio-net (§5.1) served by a vhost-user-net backend (``xinterface serve net``): one
    receive and one transmit queue; the MAC is ours (VIRTIO_NET_F_MAC is this process's),
    as QEMU's ``-netdev vhost-user`` keeps it."""

    device_id = 1
    kind = "net"
    queue_sizes = (256, 256)
    type_features = DEVICE_TYPE_BITS & ~_NET_DROPPED

    def __init__(self, socket_path: str, *, mac: bytes, timeout: float = MESSAGE_TIMEOUT,
                 reconnect: float | None = None, argument: str = "socket") -> None:
        super().__init__(socket_path, timeout=timeout, reconnect=reconnect,
                         argument=argument)
        self.config[:] = mac

    def local_features(self) -> int:
        return 1 << VIRTIO_NET_F_MAC

    def legacy_layout_is_modern(self, features: int) -> bool:
        # §5.1.6.1 (legacy): without VIRTIO_NET_F_MRG_RXBUF a legacy driver's header lacks
        # num_buffers (10 bytes, not 12): the backend must be told the legacy features.
        return bool(features >> VIRTIO_NET_F_MRG_RXBUF & 1)

    def config_write(self, offset: int, data: bytes) -> None:
        # §5.1.4.3 (legacy): a legacy driver may set the MAC by writing it; the MAC is ours.
        if self.legacy and offset + len(data) <= MAC_SIZE:
            self.config[offset:offset + len(data)] = data
            return
        super().config_write(offset, data)


class VhostUserRng(VhostUserDevice):
    """virtio-rng (§5.4) served by a vhost-user-rng backend (``xinterface serve rng``)."""

    device_id = 4
    kind = "rng"


KINDS: dict[str, type[VhostUserDevice]] = {"blk": VhostUserBlk, "net": VhostUserNet,
                                           "rng": VhostUserRng}
