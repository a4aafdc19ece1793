"""virtio-net (virtio 1.2 §5.1): an Ethernet interface whose frames go to a backend.

Two queues: receiveq1 (0) and transmitq1 (1); no control queue, no multiqueue, no offloads.
Features: VIRTIO_NET_F_MAC (the MAC in the configuration space), VIRTIO_NET_F_STATUS (the
link state there: up while the backend works) and VIRTIO_NET_F_MRG_RXBUF (a frame may fill
several receive buffers). Each frame is preceded in the guest's buffers by struct
virtio_net_hdr (§5.1.6): 12 bytes, or 10 for a legacy driver without mergeable buffers
(§5.1.6.1). With no offloads offered, the device writes a header of zeros (and
``num_buffers``) and ignores the one the driver sends.

**Transmit** runs on the doorbell's thread (a vCPU's for SYNC, the event-loop thread for
EVENTFD, the device's own with ``iothread=True``): every available chain is one frame, sent
to the backend straight from the guest's buffers (zero-copy views), then given back.

**Receive** runs on a thread of the device's own, woken by the backend's descriptor becoming
readable. Frames are taken from the backend only while the guest has receive buffers: when
it has none, the thread stops reading (the backend's queue holds or drops, as a TAP's does)
and asks the driver to notify when it adds some (§2.7.10). A frame too large for what the
driver offers is dropped and counted; the buffer stays the driver's, as QEMU does.

Nothing the guest or the host network does stops the VMM. What is dropped is counted in
``stats``: ``rx_too_small`` (receive buffers too small for a frame; with mergeable buffers,
a frame larger than the whole queue), ``rx_runt`` (shorter than an Ethernet header, an empty
datagram included), ``tx_oversize`` (a transmit chain longer than any frame), ``tx_runt``
(shorter than an Ethernet header), ``tx_backend`` (the backend refused the frame: a TAP
down or gone, a peer not reading). ``tx_coalesced`` counts frames in more pieces than a
backend takes (:data:`~.backend.IOV_MAX`), copied into one before they are sent.

**The link** (VIRTIO_NET_S_LINK_UP) is up while the backend is usable. It goes down, with a
configuration change notification, when the backend is gone: a receive fails
(``rx_backend``: the peer closed, the TAP was deleted) or a send fails with an error of
:data:`~.backend.GONE_ERRNOS`; the device then stops reading the backend. A send that works
again, or a device reset, brings the link back up and the reading back (if the backend is
still gone, the next failure takes it down again). Any other send error drops that frame
only. ``link_down`` and ``link_up`` count the transitions.

**The compiled data path** (``accel.dataplane``) moves frames in C, with the GIL released,
when the backend is a plain :class:`~.tap.TapBackend` or :class:`~.backend.SocketBackend`
(a descriptor to ``writev``/``read``): transmit while the link is up, receive for frames
that fit the buffers at hand. Anything else (a frame to drop and count, a chain that breaks
a rule, a backend error, too few buffers) comes back here and is handled as above.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import struct
import threading

from ... import accel
from ...devices.persist import State, bad_field, field_bytes
from ...errors import XInterfaceError
from ...interface import XInterface
from ..chain import DescriptorChain, VirtqueueError, gather, split, total
from ..device import Interrupt, InterruptFn, Status, VirtioDevice
from ..queue import VirtQueue
from .backend import GONE_ERRNOS, IOV_MAX, NetBackend, SocketBackend
from .tap import TapBackend

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1            # §5 Device Types
RX_QUEUE, TX_QUEUE = 0, 1    # §5.1.2 receiveq1, transmitq1

# §5.1.3 Feature bits
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1     # §5.1.4 status

# §5.1.4 struct virtio_net_config { u8 mac[6]; le16 status; le16 max_virtqueue_pairs; }
CONFIG = struct.Struct("<6sHH")
CONFIG_MAC, CONFIG_STATUS = 0, 6

# §5.1.6 struct virtio_net_hdr { u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size;
# le16 csum_start; le16 csum_offset; le16 num_buffers; }
NET_HDR = struct.Struct("<BBHHHHH")
NET_HDR_SIZE = NET_HDR.size          # 12
LEGACY_NET_HDR_SIZE = 10             # §5.1.6.1: no num_buffers without MRG_RXBUF (legacy)
VIRTIO_NET_HDR_GSO_NONE = 0

ETH_HLEN = 14                        # destination, source, EtherType (IEEE 802.3)
# The longest frame a device without segmentation offloads is given: an IP datagram's
# 65535 bytes behind an Ethernet header with one 802.1Q tag.
MAX_FRAME = 65535 + ETH_HLEN + 4
# Receive: interrupt at least this often while frames keep coming, not only when the
# backend runs dry, so the driver starts refilling before the queue is empty.
RX_INTERRUPT_BATCH = 32
DEFAULT_MAC = "52:54:00:12:34:56"    # QEMU's default: the locally administered 52:54:00 prefix


def parse_mac(mac: str | bytes) -> bytes:
    """``"52:54:00:12:34:56"`` (or 6 bytes) as 6 bytes; ``XInterfaceError(EINVAL)`` else."""
    if isinstance(mac, bytes) and len(mac) == 6:
        return mac
    try:
        raw = bytes(int(part, 16) for part in str(mac).split(":"))
    except ValueError:
        raw = b""
    if len(raw) != 6 or any(len(p) != 2 for p in str(mac).split(":")):
        raise XInterfaceError(errno.EINVAL, f"MAC {mac!r} is not six hex bytes such as "
                              f"{DEFAULT_MAC}", argument="mac", value=mac)
    if raw[0] & 1:
        raise XInterfaceError(errno.EINVAL, f"MAC {mac!r} is a multicast address",
                              argument="mac", value=mac)
    return raw


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class VirtioNet(VirtioDevice):
    """``VirtioNet(backend, mac="52:54:00:12:34:56", mergeable=True, queue_size=256)``.

    ``backend``: a :class:`~xinterface.virtio.net.backend.NetBackend` (a TAP, a socket, a
    callable). :meth:`close` closes it (the boards do so when the machine closes).
    """

    device_id = VIRTIO_ID_NET

    def __init__(self, backend: NetBackend, *, mac: str | bytes = DEFAULT_MAC,
                 mergeable: bool = True, queue_size: int = 256, iothread: bool = False) -> None:
        self.backend = backend
        self.mac = parse_mac(mac)
        features = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
        if mergeable:
            features |= 1 << VIRTIO_NET_F_MRG_RXBUF
        super().__init__(queue_sizes=(queue_size, queue_size), features=features,
                         config=CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1),
                         iothread=iothread)
        self._frame = bytearray(MAX_FRAME + 1)   # one more: a longer frame shows as such
        self._held: memoryview | None = None     # a frame read, waiting for buffers
        self._backend_ok = True                  # the link state: see the module's note
        self._link_lock = threading.Lock()
        self._wake: int = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._rx_thread: threading.Thread | None = None
        self._stopping = False

    # --- state ------------------------------------------------------------------------------
    @property
    def hdr_len(self) -> int:
        """The virtio-net header's size for the negotiated features (§5.1.6)."""
        if self.legacy and not self.negotiated(VIRTIO_NET_F_MRG_RXBUF):
            return LEGACY_NET_HDR_SIZE
        return NET_HDR_SIZE

    @property
    def link_up(self) -> bool:
        return bool(CONFIG.unpack_from(self.config)[1] & VIRTIO_NET_S_LINK_UP)

    def set_link(self, up: bool) -> None:
        """Set the link state the driver sees (a configuration change notification)."""
        if up != self.link_up:
            self.update_config(CONFIG_STATUS, struct.pack("<H", VIRTIO_NET_S_LINK_UP if up
                                                          else 0))

    def config_write(self, offset: int, data: bytes) -> None:
        # §5.1.4.3 (legacy): without VIRTIO_NET_F_CTRL_MAC_ADDR a legacy driver may set the
        # MAC by writing it here; a modern driver may not write the configuration at all.
        if self.legacy and offset + len(data) <= CONFIG_STATUS:
            with self._status_lock:
                self.config[offset:offset + len(data)] = data
            return
        self.stats["config_write_dropped"] += 1

    # --- snapshot (xinterface.devices.persist) -------------------------------------------------
    def save(self) -> State:
        """The device's state, its MAC, and the frame read from the backend that waits for
        receive buffers (frames the driver made available to send are in guest memory: the
        restored device sends them, :meth:`restored`)."""
        with self.queues[RX_QUEUE].lock:
            held = None if self._held is None else bytes(self._held).hex()
        return {**self.save_state(), "mac": format_mac(self.mac), "held": held}

    def load(self, state: State) -> None:
        mac = state.get("mac")
        if mac != format_mac(self.mac):
            raise bad_field("mac", mac, f"differs from this device's {format_mac(self.mac)}")
        held = None if state.get("held") is None else field_bytes(state, "held",
                                                                  limit=MAX_FRAME)
        self.load_state(state)
        with self.queues[RX_QUEUE].lock:
            if held is not None:
                self._frame[:len(held)] = held
                self._held = memoryview(self._frame)[:len(held)]

    def restored(self) -> None:
        super().restored()
        self._kick()   # the receive thread looks at the held frame and the backend again

    # --- the transport's side ---------------------------------------------------------------
    def connect(self, intf: XInterface, interrupt: InterruptFn, *, legacy: bool = False) -> None:
        super().connect(intf, interrupt, legacy=legacy)
        if self._rx_thread is None:
            self._stopping = False
            self._rx_thread = threading.Thread(target=self._rx_loop, daemon=True,
                                               name=f"virtio-net-rx {format_mac(self.mac)}")
            self._rx_thread.start()

    def disconnect(self) -> None:
        thread, self._rx_thread = self._rx_thread, None
        if thread is not None:
            self._stopping = True
            self._kick()
            thread.join()
        super().disconnect()

    def close(self) -> None:
        """Stop receiving and close the backend (detach the transport first); harmless
        twice."""
        self.disconnect()
        self.backend.close()
        fd, self._wake = self._wake, -1
        if fd >= 0:
            os.close(fd)

    def activate(self) -> None:
        self._kick()

    def on_reset(self) -> None:
        if self._held is not None:
            self._held = None
            self.stats["rx_dropped_reset"] += 1
        # A reset tries the backend again: the link is up, and read, until it fails anew.
        self._set_backend_ok(True, "the device was reset")

    def notify(self, index: int) -> None:
        if index == RX_QUEUE and self.queues[RX_QUEUE].ready and self.running:
            # New receive buffers: the receive thread is what fills them.
            self.stats["notify"] += 1
            self._kick()
            return
        super().notify(index)

    def _kick(self) -> None:
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    # --- transmit ---------------------------------------------------------------------------
    def _fd_backend(self) -> SocketBackend | TapBackend | None:
        """The backend, when the compiled path may move its frames itself: one whose
        ``send`` is ``writev``/``sendmsg`` and ``recv_into`` a ``read`` of its descriptor
        (not a subclass, which may do more), still open."""
        backend = self.backend
        if accel.dataplane is None or type(backend) not in (SocketBackend, TapBackend):
            return None
        assert isinstance(backend, SocketBackend | TapBackend)
        return backend if backend.fileno() >= 0 else None

    def handle(self, queue: VirtQueue) -> None:
        if queue.index != TX_QUEUE:
            return
        hdr_len = self.hdr_len
        stats = self.stats
        fast = accel.dataplane
        backend = self._fd_backend()
        while True:
            regions = queue.compiled_regions() if backend is not None else None
            if fast is not None and backend is not None and regions is not None \
                    and self._backend_ok:
                code, packets, size, _ = fast.net_tx(queue, regions, backend.fileno(),
                                                     hdr_len, not queue.batching)
                if packets:
                    stats["tx_packets"] += packets
                    stats["tx_bytes"] += size
                if code == fast.EMPTY:
                    return
            # A chain the compiled path left (or there is none): served here.
            chain = queue.pop()
            if chain is None:
                return
            self._transmit(chain, hdr_len)
            queue.add_used(chain, 0)

    def _transmit(self, chain: DescriptorChain, hdr_len: int) -> None:
        """Send one transmit chain's frame, or drop and count it."""
        stats = self.stats
        readable = chain.readable
        if readable and readable[0].nbytes == hdr_len:
            header, frame = readable[:1], readable[1:]  # the usual layout (§5.1.6.2)
        else:
            header, frame = split(readable, hdr_len)
        size = total(frame)
        if total(header) < hdr_len:
            stats["tx_no_header"] += 1
        elif size > MAX_FRAME:
            stats["tx_oversize"] += 1
        elif size < ETH_HLEN:
            stats["tx_runt"] += 1
        else:
            if len(frame) > IOV_MAX:
                # A frame the driver may legally send in more pieces than sendmsg(2) or
                # writev(2) take (INDIRECT tables of up to Queue Size descriptors).
                frame = [memoryview(gather(frame))]
                stats["tx_coalesced"] += 1
            try:
                self.backend.send(frame)
            except OSError as exc:
                stats["tx_backend"] += 1
                if exc.errno in GONE_ERRNOS:
                    self._backend_failed("send", exc)
            else:
                stats["tx_packets"] += 1
                stats["tx_bytes"] += size
                if not self._backend_ok:
                    self._set_backend_ok(True, "a frame was sent")

    # --- receive ----------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        watching = -1
        while not self._stopping:
            # Watch the backend only while frames can go somewhere; a POLLERR (a deleted
            # TAP) wakes the poll too, and the next read finds the error.
            want = self.backend.fileno() if self._rx_service() else -1
            if want != watching:
                if watching >= 0:
                    poller.unregister(watching)
                if want >= 0:
                    poller.register(want, select.POLLIN)
                watching = want
            for fd, _ in poller.poll():
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)

    def _rx_service(self) -> bool:
        """Move frames from the backend to the receive queue while both have some. True to
        wait for the backend next; False to wait for a kick (the driver out of buffers, not
        running, or the backend gone)."""
        queue = self.queues[RX_QUEUE]
        with queue.lock:
            if not (queue.ready and self.running and self._backend_ok):
                return False
            signalled = queue.next_used
            wait_backend = False
            fast = accel.dataplane
            backend = self._fd_backend()
            hdr_len = self.hdr_len
            mergeable = self.negotiated(VIRTIO_NET_F_MRG_RXBUF)
            try:
                queue.set_notification(False)
                while True:
                    regions = queue.compiled_regions() if backend is not None else None
                    batch = False
                    if (self._held is None and fast is not None and backend is not None
                            and regions is not None):
                        budget = RX_INTERRUPT_BATCH - ((queue.next_used - signalled) & 0xFFFF)
                        code, packets, size, n = fast.net_rx(
                            queue, regions, backend.fileno(), self._frame, hdr_len,
                            mergeable, max(1, budget))
                        if packets:
                            self.stats["rx_packets"] += packets
                            self.stats["rx_bytes"] += size
                        batch = code == fast.BATCH
                        if code == fast.EMPTY:
                            wait_backend = True
                            break
                        if code == fast.HELD:
                            # A frame read there that this path takes on from here.
                            try:
                                n = backend.received(n)
                            except OSError as exc:
                                self.stats["rx_backend"] += 1
                                self._backend_failed("receive", exc)
                                break
                            if self._accept(n):
                                self._held = memoryview(self._frame)[:n]
                        # BATCH: the interrupt check below; NO_BUFFERS, PYTHON: this path.
                    if self._held is None and not batch:
                        if not queue.pending() and not self._rearm(queue):
                            break
                        n = self._recv()
                        if n is None:
                            wait_backend = self._backend_ok
                            break
                        self._held = memoryview(self._frame)[:n]
                    if self._held is not None:
                        if not self._deliver(queue, self._held):
                            if self._rearm(queue, queue.pending()):
                                continue
                            break
                        self._held = None
                    if (queue.next_used - signalled) & 0xFFFF >= RX_INTERRUPT_BATCH:
                        signalled = queue.next_used
                        if queue.needs_interrupt():
                            self.interrupt(Interrupt.USED, queue.index)
            except VirtqueueError as exc:
                self._held = None
                self.set_needs_reset(str(exc))
                return False
            if queue.next_used != signalled and queue.needs_interrupt():
                self.interrupt(Interrupt.USED, queue.index)
            return wait_backend

    @staticmethod
    def _rearm(queue: VirtQueue, have: int = 0) -> bool:
        """Out of buffers (``have`` are available but too few): ask for the driver's
        notification (§2.7.10). True if more came meanwhile (go on, notifications off
        again); False to wait for the kick."""
        queue.enable_notification()
        if queue.pending() > have:
            queue.set_notification(False)
            return True
        return False

    def _recv(self) -> int | None:
        """The next frame's length in ``self._frame``, None if none waits or the backend
        failed (then it is not read again)."""
        while True:
            try:
                n = self.backend.recv_into(self._frame)
            except OSError as exc:
                self.stats["rx_backend"] += 1
                self._backend_failed("receive", exc)
                return None
            if n is None:
                return None
            if self._accept(n):
                return n

    def _accept(self, n: int) -> bool:
        """Whether a frame of ``n`` bytes goes to the guest; a drop is counted."""
        if n > MAX_FRAME:
            self.stats["rx_oversize"] += 1
        elif n < ETH_HLEN:
            self.stats["rx_runt"] += 1
        else:
            return True
        return False

    def _deliver(self, queue: VirtQueue, frame: memoryview) -> bool:
        """Put ``frame`` in receive buffers: True once delivered or dropped, False if the
        driver has too few buffers now (the frame waits for more)."""
        hdr_len = self.hdr_len
        need = hdr_len + len(frame)
        mergeable = self.negotiated(VIRTIO_NET_F_MRG_RXBUF)
        chains: list[DescriptorChain] = []
        room = 0
        try:
            while room < need:
                chain = queue.pop()
                if chain is None:
                    queue.unpop(chains)
                    return False
                chains.append(chain)
                room += chain.writable_len
                # Without MRG_RXBUF one buffer takes the whole frame (§5.1.6.3.1); with it the
                # first holds at least the header, and the frame fits in the whole queue.
                if ((room < need and (not mergeable or len(chains) == queue.size))
                        or room < hdr_len):
                    queue.unpop(chains)
                    self.stats["rx_too_small"] += 1
                    return True
        except BaseException:
            for chain in chains:
                chain.release()
            raise
        # §5.1.6.4: flags 0 (no VIRTIO_NET_HDR_F_*), GSO_NONE; num_buffers with MRG_RXBUF or
        # VERSION_1 (where it is always 1 without MRG_RXBUF).
        header = NET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0, len(chains))[:hdr_len]
        data = [memoryview(header), frame]
        last = len(chains) - 1
        for i, chain in enumerate(chains):
            written = _fill(chain.writable, data)
            # §5.1.6.4.2: the driver finds num_buffers used buffers together.
            queue.add_used(chain, written, publish=i == last)
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += len(frame)
        return True

    def _backend_failed(self, what: str, exc: OSError) -> None:
        # The message, not the exception: a logging handler that keeps records (pytest's)
        # would keep its traceback, and through it views of guest memory, alive.
        self._set_backend_ok(False, f"backend {self.backend!r} failed to {what}: {exc}")

    def _set_backend_ok(self, ok: bool, why: str) -> None:
        """Move the link state; the configuration space shows it, and the receive thread
        starts (or stops) reading the backend."""
        with self._link_lock:
            if self._backend_ok == ok:
                return
            self._backend_ok = ok
        self.stats["link_up" if ok else "link_down"] += 1
        log.warning("%s: %s; link %s", self.name, why, "up" if ok else "down")
        self._show_link()
        self._kick()

    def _show_link(self) -> None:
        """The configuration's link bit from the link state, read and written under the
        status lock, so racing transitions leave the last state shown."""
        with self._status_lock:
            status = VIRTIO_NET_S_LINK_UP if self._backend_ok else 0
            if CONFIG.unpack_from(self.config)[1] == status:
                return
            struct.pack_into("<H", self.config, CONFIG_STATUS, status)
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.status & Status.DRIVER_OK:
            self.interrupt(Interrupt.CONFIG)

    def __repr__(self) -> str:
        return f"VirtioNet({format_mac(self.mac)}, backend={self.backend!r})"


def _fill(views: list[memoryview], data: list[memoryview]) -> int:
    """Copy from the front of ``data`` (consumed in place) into ``views``; bytes copied."""
    done = 0
    for view in views:
        at = 0
        while at < view.nbytes and data:
            src = data[0]
            n = min(view.nbytes - at, len(src))
            view[at:at + n] = src[:n]
            at += n
            if n == len(src):
                data.pop(0)
            else:
                data[0] = src[n:]
        done += at
        if not data:
            break
    return done
