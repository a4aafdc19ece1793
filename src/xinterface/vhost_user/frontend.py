"""The frontend's side of one vhost-user connection: requests to a backend process and its
replies, over the same wire format (:mod:`.protocol`) and message framing (:mod:`.channel`)
the backend side uses.

A backend is untrusted like any peer: every reply is framed and checked (its header says it
answers this request, its payload has this request's size), a backend that stops answering
for longer than ``timeout`` is a dead one, and every failure is a :class:`ProtocolError`
(fatal) or :class:`Disconnected` the caller turns into the device's error state. Requests
are serialised by one lock: one request is outstanding at a time, as the spec requires.
"""

from __future__ import annotations

import errno
import socket
import threading

from ..errors import XInterfaceError
from .channel import MESSAGE_TIMEOUT, Channel, Disconnected
from .protocol import (
    F_PROTOCOL_FEATURES,
    U64,
    VRING_ADDR,
    VRING_STATE,
    ProtocolError,
    ProtocolFeature,
    Region,
    Request,
    decode_config,
    decode_state,
    decode_u64,
    encode,
    encode_config,
    encode_memory,
    request_name,
)

# The protocol extensions this frontend uses when the backend has them: acknowledgements
# (so a refused request is seen at once), the configuration space, queue counts.
WANTED_PROTOCOL_FEATURES = (1 << ProtocolFeature.REPLY_ACK | 1 << ProtocolFeature.CONFIG
                            | 1 << ProtocolFeature.MQ)

__all__ = ["WANTED_PROTOCOL_FEATURES", "BackendConnection", "Disconnected", "ProtocolError",
           "connect"]


def connect(path: str, *, timeout: float = MESSAGE_TIMEOUT,
            argument: str = "socket") -> BackendConnection:
    """A connection to the backend listening at ``path``; ``XInterfaceError`` with the
    socket's errno (ENOENT: no such socket, ECONNREFUSED: nobody listens) naming
    ``argument``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise XInterfaceError(exc.errno or errno.ECONNREFUSED,
                              f"vhost-user socket {path}: {exc.strerror or exc}",
                              argument=argument, value=path) from None
    return BackendConnection(Channel(sock, timeout=timeout, peer="backend"), path)


class BackendConnection:
    """Requests to one backend. :meth:`handshake` first; then the ring and memory requests
    in the order the spec's "Starting and stopping rings" gives."""

    def __init__(self, channel: Channel, path: str) -> None:
        self.channel = channel
        self.path = path
        self.features = 0             # what the backend offered (GET_FEATURES)
        self.protocol_features = 0    # what both ends use (SET_PROTOCOL_FEATURES)
        self.queue_num: int | None = None
        self._lock = threading.Lock()

    # --- one request ------------------------------------------------------------------------
    def request(self, request: Request, payload: bytes = b"", fds: list[int] | None = None,
                *, reply: bool = False) -> bytes:
        """Send ``request``; its reply's payload if it has one (``reply``). With REPLY_ACK
        every other request is acknowledged too: a refusal is a ProtocolError naming it."""
        ack = not reply and bool(self.protocol_features >> ProtocolFeature.REPLY_ACK & 1)
        with self._lock:
            self.channel.send(encode(request, payload, need_reply=ack), fds)
            if not (reply or ack):
                return b""
            message = self.channel.receive(reply_to=request)
            message.close()   # no reply carries fds: any that came are closed
        if ack:
            if decode_u64(f"acknowledgement of {request_name(request)}", message.payload):
                raise ProtocolError(f"the backend refused {request_name(request)}")
            return b""
        return message.payload

    def _u64(self, request: Request) -> int:
        return decode_u64(f"reply to {request_name(request)}",
                          self.request(request, reply=True))

    # --- the session ------------------------------------------------------------------------
    def handshake(self, *, config_size: int = 0) -> bytes:
        """SET_OWNER, the features, the protocol features both ends have; the
        configuration space's first ``config_size`` bytes (GET_CONFIG) if asked, which
        needs VHOST_USER_PROTOCOL_F_CONFIG (ProtocolError without it)."""
        self.request(Request.SET_OWNER)
        self.features = self._u64(Request.GET_FEATURES)
        if self.features >> F_PROTOCOL_FEATURES & 1:
            offered = self._u64(Request.GET_PROTOCOL_FEATURES)
            chosen = offered & WANTED_PROTOCOL_FEATURES
            # Sent before the acknowledgements it turns on apply: no ack expected for it.
            self.request(Request.SET_PROTOCOL_FEATURES, U64.pack(chosen))
            self.protocol_features = chosen
            if chosen >> ProtocolFeature.MQ & 1:
                self.queue_num = self._u64(Request.GET_QUEUE_NUM)
        if not config_size:
            return b""
        if not self.protocol_features >> ProtocolFeature.CONFIG & 1:
            raise ProtocolError("the backend has no VHOST_USER_PROTOCOL_F_CONFIG: its "
                                "device's configuration space cannot be read")
        return self.get_config(config_size)

    @property
    def has_protocol_features(self) -> bool:
        return bool(self.features >> F_PROTOCOL_FEATURES & 1)

    def set_features(self, features: int) -> None:
        if self.has_protocol_features:
            features |= 1 << F_PROTOCOL_FEATURES   # rings then start disabled (spec)
        self.request(Request.SET_FEATURES, U64.pack(features))

    def set_mem_table(self, regions: list[Region], fds: list[int]) -> None:
        self.request(Request.SET_MEM_TABLE, encode_memory(regions), fds)

    def set_config(self, offset: int, data: bytes, config_size: int) -> bytes:
        """Write ``data`` at ``offset`` of the backend's configuration space (SET_CONFIG,
        flags 0: from the frontend, not a migration), then read its first ``config_size``
        bytes back (GET_CONFIG): what the backend holds now. ProtocolError without
        VHOST_USER_PROTOCOL_F_CONFIG (not fatal: nothing was sent)."""
        if not self.protocol_features >> ProtocolFeature.CONFIG & 1:
            raise ProtocolError("the backend has no VHOST_USER_PROTOCOL_F_CONFIG")
        self.request(Request.SET_CONFIG, encode_config(offset, data))
        return self.get_config(config_size)

    def get_config(self, size: int) -> bytes:
        """The first ``size`` bytes of the backend's configuration space. Always read from
        offset 0, as QEMU reads it: libvhost-user's backends ignore GET_CONFIG's offset."""
        reply = self.request(Request.GET_CONFIG, encode_config(0, bytes(size)), reply=True)
        access = decode_config("reply to GET_CONFIG", reply, with_data=True)
        if access.offset != 0 or access.size != size:
            raise ProtocolError(f"reply to GET_CONFIG: {access.size} bytes at "
                                f"{access.offset}, not {size} at 0", fatal=True)
        return access.data

    def start_ring(self, index: int, size: int, base: int, desc: int, used: int, avail: int,
                   kick: int, call: int) -> None:
        """One ring from ``base``: its size, addresses (this process's virtual addresses),
        call and kick eventfds, and with protocol features its enable."""
        self.request(Request.SET_VRING_NUM, VRING_STATE.pack(index, size))
        self.request(Request.SET_VRING_BASE, VRING_STATE.pack(index, base))
        self.request(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, desc, used, avail, 0))
        self.request(Request.SET_VRING_CALL, U64.pack(index), [call])
        self.request(Request.SET_VRING_KICK, U64.pack(index), [kick])
        if self.has_protocol_features:
            self.request(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, 1))

    def stop_ring(self, index: int) -> int:
        """Stop ring ``index`` (GET_VRING_BASE); its next available index."""
        reply = self.request(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0), reply=True)
        ring, base = decode_state("reply to GET_VRING_BASE", reply)
        if ring != index:
            raise ProtocolError(f"reply to GET_VRING_BASE: ring {ring}, not {index}")
        return base

    def shutdown(self) -> None:
        """From any thread: end the connection; a request waiting fails."""
        self.channel.shutdown()

    def close(self) -> None:
        """End the connection and release the socket, once a request in flight (woken by
        the shutdown) has let go of it."""
        self.channel.shutdown()
        with self._lock:
            self.channel.close()

    def fileno(self) -> int:
        return self.channel.sock.fileno()

