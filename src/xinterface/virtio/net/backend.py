"""Where a virtio-net device's frames go and come from: the backend.

A backend moves whole Ethernet frames (no virtio-net header) between the device and the
host. The device's receive thread waits for :meth:`NetBackend.fileno` to become readable,
then takes frames with :meth:`NetBackend.recv_into` until it returns None; transmitted
frames go out with :meth:`NetBackend.send`, on the thread that serves the transmit queue.

Two backends need no privileges, for tests and for users without root:

- :class:`SocketBackend`: frames are datagrams on a connected ``AF_UNIX`` socket
  (``SOCK_SEQPACKET`` keeps frame boundaries and reports a closed peer).
  ``SocketBackend.pair()`` returns the backend and the other end, the "wire": whatever
  reads the peer gets the guest's frames, whatever it writes there the guest receives.
- :class:`CallbackBackend`: each transmitted frame is handed to a Python callable;
  :meth:`CallbackBackend.inject` gives the guest a frame.

:class:`~xinterface.virtio.net.tap.TapBackend` is the TAP device (``/dev/net/tun``, root or
``CAP_NET_ADMIN``).
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from ...errors import XInterfaceError

# A unix socket's send buffer bounds the frames in flight to the reader (unix(7)).
WIRE_BUFFER = 4 << 20
# The most pieces ``NetBackend.send`` is given for one frame: sendmsg(2) and writev(2)
# refuse more than IOV_MAX (1024 on Linux) iovecs.
IOV_MAX = 1024
# Errors of a send that mean the backend is gone, not that this one frame failed: the peer
# closed its end, the descriptor is closed, the TAP interface was deleted (EBADFD). Any
# other error (EIO from a TAP that is down, ENOBUFS, EMSGSIZE) drops that frame only.
GONE_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED,
                         errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO})
_HUNG_UP = select.POLLHUP | select.POLLRDHUP


class NetBackend(Protocol):
    """What the device needs of a backend."""

    def fileno(self) -> int:
        """A descriptor that polls readable when a frame waits for the guest (non-blocking)."""
        ...

    def recv_into(self, buffer: bytearray) -> int | None:
        """Read one waiting frame into ``buffer``: its length, or None when none waits.
        ``OSError`` when the backend is gone (the device then stops reading it)."""
        ...

    def send(self, frame: Sequence[memoryview]) -> None:
        """Send one frame given as a scatter list of at most :data:`IOV_MAX` pieces.
        ``OSError`` if it cannot: the device drops and counts the frame, and takes the link
        down only for an error in :data:`GONE_ERRNOS`."""
        ...

    def close(self) -> None: ...


class SocketBackend:
    """Frames as datagrams on a connected socket (``AF_UNIX`` ``SOCK_SEQPACKET`` or
    ``SOCK_DGRAM``). The socket is made non-blocking; :meth:`close` closes it.

    A transmitted frame the peer has no room for (its receive queue full) is dropped with
    ``BlockingIOError``, as a wire drops what nobody takes: the guest never waits for the host.
    """

    def __init__(self, sock: socket.socket) -> None:
        if sock.type not in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
            raise XInterfaceError(errno.EINVAL, f"socket type {sock.type!r}: frames need "
                                  "SOCK_SEQPACKET or SOCK_DGRAM", argument="sock", value=sock)
        sock.setblocking(False)
        self.sock = sock
        self._seqpacket = sock.type == socket.SOCK_SEQPACKET

    @classmethod
    def pair(cls) -> tuple[SocketBackend, socket.socket]:
        """A backend and the other end of its wire (blocking, ``SOCK_SEQPACKET``). Each end
        may hold up to :data:`WIRE_BUFFER` bytes of frames in flight (the kernel caps it at
        ``net.core.wmem_max``): a 60-byte frame costs about 1 KiB of it."""
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, peer):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WIRE_BUFFER)
        return cls(ours), peer

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buffer: bytearray) -> int | None:
        try:
            n = self.sock.recv_into(buffer)
        except BlockingIOError:
            return None
        return self.received(n)

    def received(self, n: int) -> int:
        """A read of ``n`` bytes of the socket (here, or by the compiled data path): ``n``,
        or ``ConnectionResetError`` when it was the peer's close."""
        if n == 0 and self._seqpacket and self._hung_up():
            # A SOCK_SEQPACKET read of 0 is the peer's close (unix(7)), or an empty datagram
            # the peer sent: only the close also hangs the socket up (POLLHUP/POLLRDHUP).
            raise ConnectionResetError(errno.ECONNRESET, "the peer closed the socket")
        return n

    def _hung_up(self) -> bool:
        poller = select.poll()
        poller.register(self.sock, _HUNG_UP)
        return any(events & _HUNG_UP for _, events in poller.poll(0))

    def send(self, frame: Sequence[memoryview]) -> None:
        self.sock.sendmsg(frame)

    def close(self) -> None:
        self.sock.close()


class CallbackBackend(SocketBackend):
    """Each frame the guest transmits is passed to ``on_frame(frame: bytes)``, on the thread
    serving the transmit queue (a vCPU's for SYNC doorbells: keep it short). Frames for the
    guest are given with :meth:`inject` from any thread."""

    def __init__(self, on_frame: Callable[[bytes], object]) -> None:
        ours, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        super().__init__(ours)
        self.on_frame = on_frame

    def send(self, frame: Sequence[memoryview]) -> None:
        self.on_frame(b"".join(frame))

    def inject(self, frame: bytes | bytearray | memoryview, *,
               timeout: float | None = None) -> None:
        """Queue ``frame`` for the guest. Blocks while the queue towards the device is full
        (the guest is not taking frames), at most ``timeout`` seconds (``TimeoutError``)."""
        self._peer.settimeout(timeout)
        self._peer.send(frame)

    def close(self) -> None:
        super().close()
        self._peer.close()

