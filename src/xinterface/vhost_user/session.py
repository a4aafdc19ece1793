"""The backend's side of one vhost-user connection: a :class:`VirtioDevice` served to the
frontend as a transport would serve it.

The session plays the transport: it offers the device's features (and
``VHOST_USER_F_PROTOCOL_FEATURES``), writes the negotiated ones and the status when the
first ring starts, configures each :class:`~xinterface.virtio.queue.VirtQueue` from the
ring messages, turns kicks (the kick eventfds, read by one epoll thread) into
``device.notify(index)`` and the device's interrupts into writes of the call eventfds. The
device's guest memory is a :class:`~.interface.SessionInterface` over the frontend's memory
table. The device cannot tell this from virtio-pci.

Ring states (spec, "Ring states"): a ring starts on SET_VRING_KICK (its kick fd is
watched), is stopped by GET_VRING_BASE (which returns its next available index), and with
protocol features is processed only once SET_VRING_ENABLE enabled it. When every ring has
stopped, the device is reset, so the next start negotiates again (a guest rebooting, or a
new frontend).

Every request is checked before it changes anything. A request that cannot be honoured is
refused with one line through ``report`` and, when the frontend asked (REPLY_ACK), a
failure reply; a stream that can no longer be framed, or a fatal error, ends the session.
The session's end (the frontend gone) resets the device and releases every fd and mapping.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from ..delivery.eventfd import EventLoop, read_count
from ..errors import XInterfaceError
from ..grace import Grace
from ..virtio.chain import VirtqueueError
from ..virtio.device import VIRTIO_F_VERSION_1, Interrupt, Status, VirtioDevice
from ..virtio.queue import MAX_QUEUE_SIZE, ring_sizes
from .channel import Channel, Disconnected, Message
from .interface import MemoryHost, SessionInterface
from .memory import MemoryTable
from .protocol import (
    F_PROTOCOL_FEATURES,
    U64,
    VRING_INDEX_MASK,
    VRING_NOFD,
    VRING_STATE,
    ProtocolError,
    ProtocolFeature,
    Request,
    decode_addr,
    decode_config,
    decode_memory,
    decode_state,
    decode_u64,
    encode,
    encode_config,
)

Report = Callable[[str], None]

# What this backend implements of the protocol extensions.
PROTOCOL_FEATURES = (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
                     | 1 << ProtocolFeature.CONFIG | 1 << ProtocolFeature.RESET_DEVICE)
VIRTIO_ID_NET = 1   # virtio 1.2 §5: the device ID of a network card
# Requests answered with a payload of their own (REPLY_ACK does not apply to them).
_REPLIES = {Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
            Request.GET_QUEUE_NUM, Request.GET_CONFIG}


def is_eventfd(fd: int) -> bool:
    """Whether ``fd`` is an eventfd: kick, call and err fds must be (a pipe or a file would
    read differently, or be readable for ever at its end)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


class Ring:
    """What the frontend said of one ring; applied to the device's queue when it starts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.num = 0
        self.addr: tuple[int, int, int] | None = None  # frontend addresses: desc, avail, used
        self.base = 0
        self.kick = -1
        self.call = -1
        self.err = -1
        self.enabled = False
        self.started = False
        self.last_used: int | None = None
        self.lock = threading.Lock()   # the call and err fds: never written once closed

    def signal(self, which: str = "call") -> None:
        with self.lock:
            fd = self.call if which == "call" else self.err
            if fd >= 0:
                # A full counter (EAGAIN) still has the frontend's attention.
                with contextlib.suppress(OSError):
                    os.eventfd_write(fd, 1)

    def set_fd(self, which: str, fd: int) -> None:
        with self.lock:
            old = getattr(self, which)
            setattr(self, which, fd)
        if old >= 0:
            os.close(old)


class Session:
    """Serve ``device`` to the frontend at the other end of ``channel`` until it goes.

    ``report(line)`` gets one line per refused request or dropped connection.
    """

    def __init__(self, device: VirtioDevice, channel: Channel, report: Report) -> None:
        self.device = device
        self.channel = channel
        self.report = report
        self.host = MemoryHost()
        self.intf = SessionInterface(self.host)
        self.features = 0
        self.protocol_features = 0
        self.owner = False
        self.rings = [Ring(i) for i in range(len(device.queues))]
        self._retired: list[MemoryTable] = []
        self._loop = EventLoop(Grace(), self._loop_error)
        self.handlers: dict[int, Callable[[Message], bytes | None]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset,
            Request.RESET_DEVICE: self._reset,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
        }
        device.connect(self.intf, self._interrupt)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Handle requests until the frontend disconnects or breaks the stream; then reset
        the device and release everything. Never raises for anything the frontend did."""
        try:
            while True:
                try:
                    message = self.channel.receive()
                except Disconnected:
                    return
                if not self.handle(message):
                    return
        except ProtocolError as exc:
            self.report(f"vhost-user: dropping the frontend: {exc}")
        finally:
            self.close()

    def handle(self, message: Message) -> bool:
        """Serve one request; False when the connection must be dropped."""
        request = message.header.request
        handler = self.handlers.get(request)
        ok = True
        reply: bytes | None = None
        try:
            if handler is None:
                raise ProtocolError("not implemented by this backend")
            reply = handler(message)
        except (ProtocolError, OSError) as exc:   # XInterfaceError is an OSError
            if isinstance(exc, ProtocolError) and exc.fatal:
                raise
            if request in _REPLIES:
                # The frontend waits for this reply: it cannot have one, so it must not wait.
                raise ProtocolError(f"{message.name} cannot be answered: {exc}",
                                    fatal=True) from None
            ok = False
            self.report(f"vhost-user: {message.name} refused: {exc}")
        except Exception as exc:  # a defect of ours: this frontend goes, the next is served
            self.report(f"vhost-user: {message.name}: internal error {type(exc).__name__}: "
                        f"{exc}")
            return False
        finally:
            message.close()
        if reply is not None:
            self.channel.send(encode(request, reply, reply=True))
        elif (message.header.need_reply and request not in _REPLIES
              and self.protocol_features >> ProtocolFeature.REPLY_ACK & 1):
            self.channel.send(encode(request, U64.pack(0 if ok else 1), reply=True))
        return True

    def close(self) -> None:
        """The frontend is gone: stop every ring, reset the device, release fds and maps."""
        for ring in self.rings:
            self._stop(ring)
            for which in ("call", "err"):
                ring.set_fd(which, -1)
        self.device.disconnect()
        self._loop.close()
        self._swap_memory(None)
        for table in self._retired:
            try:
                table.close()
            except BufferError as exc:
                self.report(f"vhost-user: {exc}")
        self._retired = []
        if not self.intf.released:
            self.intf.put()   # the session's reference: the queues dropped theirs in detach
        self.channel.close()

    def _loop_error(self, exc: BaseException) -> None:
        self.report(f"vhost-user: kick handler failed: {type(exc).__name__}: {exc}")

    # --- features -------------------------------------------------------------------------
    @property
    def offered(self) -> int:
        return self.device.device_features | 1 << F_PROTOCOL_FEATURES

    def _get_features(self, message: Message) -> bytes:
        self._no_payload(message)
        return U64.pack(self.offered)

    def _set_features(self, message: Message) -> None:
        value = decode_u64(message.name, message.payload)
        if value & ~self.offered:
            raise ProtocolError(f"features {value:#x} include bits never offered "
                                f"({value & ~self.offered:#x})")
        if value != self.features and any(r.started for r in self.rings):
            raise ProtocolError("features cannot change while a ring runs")
        if value != self.features and self.device.status:
            self._reset_device()   # the next start negotiates the new set
        self.features = value

    def _get_protocol_features(self, message: Message) -> bytes:
        self._no_payload(message)
        return U64.pack(PROTOCOL_FEATURES)

    def _set_protocol_features(self, message: Message) -> None:
        value = decode_u64(message.name, message.payload)
        if value & ~PROTOCOL_FEATURES:
            raise ProtocolError(f"protocol features {value:#x} include bits never offered")
        self.protocol_features = value

    def _set_owner(self, message: Message) -> None:
        self._no_payload(message)
        self.owner = True

    def _reset(self, message: Message) -> None:
        for ring in self.rings:
            self._stop(ring)
        self._reset_device()
        self.features = 0

    def _get_queue_num(self, message: Message) -> bytes:
        self._no_payload(message)
        return U64.pack(len(self.device.queues))

    def _get_config(self, message: Message) -> bytes:
        access = decode_config(message.name, message.payload, with_data=False)
        return encode_config(access.offset, self.device.read_config(access.offset, access.size),
                             access.flags)

    def _set_config(self, message: Message) -> None:
        access = decode_config(message.name, message.payload, with_data=True)
        self.device.write_config(access.offset, access.data)

    # --- memory ---------------------------------------------------------------------------
    def _set_mem_table(self, message: Message) -> None:
        regions = decode_memory(message.payload)
        table = MemoryTable(regions, message.take_fds(len(regions)))
        self._swap_memory(table)

    def _swap_memory(self, table: MemoryTable | None) -> None:
        """Replace the memory table under every queue: the running rings are mapped again
        (at their frontend addresses, through the new table), their indices kept."""
        queues = self.device.queues
        for q in queues:
            q.lock.acquire()
        try:
            running = [q for q in queues if q.mapped]
            for q in running:
                q.unmap()
            old = self.host.memory
            self.host.memory = table
            for q in running:
                ring = self.rings[q.index]
                try:
                    if table is None:
                        raise VirtqueueError("no memory table")
                    self._place(ring, table)
                    q.map(self.intf)
                except (VirtqueueError, XInterfaceError) as exc:
                    self.device.set_needs_reset(f"queue {q.index}: {exc}")
        finally:
            for q in queues:
                q.lock.release()
        if isinstance(old, MemoryTable):
            try:
                old.close()
            except BufferError:
                self._retired.append(old)   # a view still held: closed with the session

    def _place(self, ring: Ring, table: MemoryTable) -> None:
        """Write ``ring``'s guest-physical ring addresses into its queue, from the frontend's
        addresses; EFAULT when a part lies in no region."""
        assert ring.addr is not None
        q = self.device.queues[ring.index]
        desc_len, avail_len, used_len = ring_sizes(ring.num)
        desc, avail, used = ring.addr
        q.desc_addr = table.gpa_of(desc, desc_len)
        q.avail_addr = table.gpa_of(avail, avail_len)
        q.used_addr = table.gpa_of(used, used_len)

    # --- rings ----------------------------------------------------------------------------
    def _ring(self, index: int, what: str) -> Ring:
        if not 0 <= index < len(self.rings):
            raise ProtocolError(f"{what}: ring {index} does not exist (the device has "
                                f"{len(self.rings)})")
        return self.rings[index]

    def _stopped(self, index: int, what: str) -> Ring:
        ring = self._ring(index, what)
        if ring.started:
            raise ProtocolError(f"{what}: ring {index} is running")
        return ring

    def _set_vring_num(self, message: Message) -> None:
        index, num = decode_state(message.name, message.payload)
        ring = self._stopped(index, message.name)
        limit = min(self.device.queue_max_size(index), MAX_QUEUE_SIZE)
        if not 0 < num <= limit or num & (num - 1):
            raise ProtocolError(f"ring {index}: size {num} is not a power of two from 1 to "
                                f"{limit}")
        ring.num = num

    def _set_vring_addr(self, message: Message) -> None:
        addr = decode_addr(message.payload)
        ring = self._ring(addr.ring, message.name)
        new = (addr.desc, addr.avail, addr.used)
        if ring.started and new != ring.addr:
            raise ProtocolError(f"ring {addr.ring} is running: its rings cannot move")
        ring.addr = new

    def _set_vring_base(self, message: Message) -> None:
        index, num = decode_state(message.name, message.payload)
        ring = self._stopped(index, message.name)
        if num > 0xFFFF:
            raise ProtocolError(f"ring {index}: base {num} is not a 16-bit index")
        ring.base = num

    def _get_vring_base(self, message: Message) -> bytes:
        index, _ = decode_state(message.name, message.payload)
        ring = self._ring(index, message.name)
        self._stop(ring)
        if not any(r.started for r in self.rings):
            self._reset_device()
        return VRING_STATE.pack(index, ring.base)

    def _fd_request(self, message: Message) -> tuple[Ring, int]:
        value = decode_u64(message.name, message.payload)
        if value & ~(VRING_INDEX_MASK | VRING_NOFD):
            raise ProtocolError(f"value {value:#x} has bits other than the index and NOFD")
        ring = self._ring(value & VRING_INDEX_MASK, message.name)
        if value & VRING_NOFD:
            message.take_fds(0)
            return ring, -1
        fd = message.take_fds(1)[0]
        if not is_eventfd(fd):
            os.close(fd)
            raise ProtocolError(f"ring {ring.index}: the fd passed is not an eventfd")
        return ring, fd

    def _set_vring_call(self, message: Message) -> None:
        ring, fd = self._fd_request(message)
        ring.set_fd("call", fd)

    def _set_vring_err(self, message: Message) -> None:
        ring, fd = self._fd_request(message)
        ring.set_fd("err", fd)

    def _set_vring_kick(self, message: Message) -> None:
        ring, fd = self._fd_request(message)
        if ring.kick >= 0:
            self._unwatch(ring)
            os.close(ring.kick)
        ring.kick = fd
        if not ring.started:
            try:
                self._start(ring)
            except BaseException:
                ring.kick = -1
                os.close(fd)
                raise
        if fd >= 0:
            self._loop.add(fd, lambda: self._kicked(ring))

    def _set_vring_enable(self, message: Message) -> None:
        index, num = decode_state(message.name, message.payload)
        ring = self._ring(index, message.name)
        if num not in (0, 1):
            raise ProtocolError(f"ring {index}: enable {num} is neither 0 nor 1")
        ring.enabled = bool(num)
        if ring.started:
            self._gate(ring)

    def _start(self, ring: Ring) -> None:
        """Start ``ring``: the device running with the negotiated features, its queue mapped
        at the ring's addresses from the ring's base. Refused (nothing started) when the
        frontend has not said enough, or said something the device cannot use."""
        table = self.host.memory
        if not isinstance(table, MemoryTable):
            raise ProtocolError(f"ring {ring.index}: kick before any memory table")
        if ring.addr is None or not ring.num:
            raise ProtocolError(f"ring {ring.index}: kick before its size and addresses")
        device = self.device
        if not any(r.started for r in self.rings):
            self._run_device()
        q = device.queues[ring.index]
        with q.lock:
            q.size = ring.num
            self._place(ring, table)
            q.next_avail = ring.base
        device.set_queue_ready(ring.index, True)
        if not q.ready:
            raise ProtocolError(f"ring {ring.index}: the device refused it: {device.error}")
        with q.lock:
            # The used index the driver last saw: the frontend's, not ours (a restart).
            q.next_used = int.from_bytes(self.intf.copy_from(q.used_addr + 2, 2), "little")
        ring.last_used = q.next_used
        ring.started = True
        ring.enabled = not self.features >> F_PROTOCOL_FEATURES & 1 or ring.enabled
        if not ring.enabled:
            self._gate(ring)

    def _gate(self, ring: Ring) -> None:
        """Apply a started ring's enable (spec, "Ring states"): a disabled ring's queue is
        not ready, so the device takes nothing from it and puts nothing in it (no received
        frame lands in a disabled receive ring); enabled again, the buffers made available
        meanwhile are served. A disabled transmit ring of a net device is still drained,
        its frames discarded, as the spec requires."""
        q = self.device.queues[ring.index]
        with q.lock:
            q.ready = ring.enabled and q.mapped
        if ring.enabled:
            self.device.notify(ring.index)
        elif self._discards(ring.index):
            self._discard(ring)

    def _discards(self, index: int) -> bool:
        """Whether queue ``index`` is a virtio-net transmitq (§5.1.2: transmitqN is 2N+1;
        an odd number of queues ends with the control queue)."""
        queues = len(self.device.queues)
        return (self.device.device_id == VIRTIO_ID_NET and index % 2 == 1
                and not (queues % 2 and index == queues - 1))

    def _discard(self, ring: Ring) -> None:
        """Take every chain of a disabled transmit ring and give it back unsent."""
        q = self.device.queues[ring.index]
        dropped = 0
        with q.lock:
            if not q.mapped:
                return
            try:
                for chain in q:
                    q.add_used(chain, 0)
                    dropped += 1
            except VirtqueueError as exc:
                self.device.set_needs_reset(str(exc))
                return
            notify = dropped > 0 and q.needs_interrupt()
        self.device.stats["tx_discarded_disabled"] += dropped
        if notify:
            self._interrupt(Interrupt.USED)

    def _run_device(self) -> None:
        """Status and features as a driver would write them through a transport: the
        frontend negotiated with the guest, this replays the outcome."""
        device = self.device
        if device.status:
            self._reset_device()
        # A legacy driver behind the frontend leaves VERSION_1 out: the device runs as a
        # legacy one (a transport's legacy interface: no FEATURES_OK), which matters where
        # the layouts differ (virtio-net's 10-byte header without MRG_RXBUF, §5.1.6.1).
        device.legacy = not self.features >> VIRTIO_F_VERSION_1 & 1
        features = self.features & device.device_features
        device.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        device.set_driver_features(0, features & 0xFFFFFFFF)
        if not device.legacy:
            device.set_driver_features(1, features >> 32)
            device.set_status(Status.FEATURES_OK)
            if not device.status & Status.FEATURES_OK:
                raise ProtocolError(f"the device refused the features {features:#x}")
        device.set_status(device.status | Status.DRIVER_OK)

    def _reset_device(self) -> None:
        """Reset the device, and offer a modern one again (the next frontend negotiates
        anew: GET_FEATURES offers VERSION_1)."""
        self.device.reset()
        self.device.legacy = False

    def _stop(self, ring: Ring) -> None:
        """Stop ``ring`` (if it runs): no kick is served after this, its next available
        index is kept as its base, its queue unmapped."""
        if ring.kick >= 0:
            self._unwatch(ring)
            os.close(ring.kick)
            ring.kick = -1
        if not ring.started:
            return
        q = self.device.queues[ring.index]
        with q.lock:
            ring.base = q.next_avail
            q.ready = False
        self.device.set_queue_ready(ring.index, False)
        ring.started = False

    def _unwatch(self, ring: Ring) -> None:
        if ring.kick >= 0:
            self._loop.remove(ring.kick)

    def _kicked(self, ring: Ring) -> int:
        count = read_count(ring.kick) if ring.kick >= 0 else 0
        if ring.started and ring.enabled:
            self.device.notify(ring.index)
        elif ring.started and self._discards(ring.index):
            self._discard(ring)
        return count

    # --- interrupts -----------------------------------------------------------------------
    def _interrupt(self, kind: Interrupt, queue: int | None = None) -> None:
        """The device's interrupt: a used buffer notification goes to the call fd of each
        ring whose used index moved (the device does not say which queue); the error state
        to every ring's err fd. A configuration change has no channel here (it needs the
        backend request channel, not offered)."""
        rings = [r for r in self.rings if r.started]
        if kind & Interrupt.USED:
            moved = []
            for ring in rings:
                used = self.device.queues[ring.index].next_used
                with ring.lock:
                    if used != ring.last_used:
                        ring.last_used = used
                        moved.append(ring)
            for ring in moved or rings:
                ring.signal("call")
        if kind & Interrupt.CONFIG and self.device.status & Status.DEVICE_NEEDS_RESET:
            for ring in rings:
                ring.signal("err")

    @staticmethod
    def _no_payload(message: Message) -> None:
        if message.payload:
            raise ProtocolError(f"{message.name}: payload of {len(message.payload)} bytes, "
                                "none expected")


