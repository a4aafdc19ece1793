"""One vhost-user connection: whole messages in and out of a UNIX stream socket, with the
file descriptors passed beside them (SCM_RIGHTS).

Both ends use it: the backend's session (its peer the frontend) and the frontend's
:class:`~.frontend.BackendConnection` (its peer the backend); ``peer`` names the other end
in every error. The peer is untrusted. A message is read whole or not at all: a bad header
or a peer that stops in the middle of a message (for longer than ``timeout``) ends the
connection with a :class:`ProtocolError`; an idle peer between messages is waited for
without limit on the backend's side (but :meth:`Channel.shutdown` from another thread, or
the peer closing, ends the wait).
Every fd received is owned by the :class:`Message` that carries it; fds beyond what a
request takes are closed by whoever handles it (:meth:`Message.take_fds`).
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from .protocol import (
    HEADER,
    MAX_FDS,
    Header,
    ProtocolError,
    decode_header,
    decode_reply_header,
    request_name,
)

# How long the rest of a message may take once its first byte arrived: a live peer
# writes a message with one sendmsg, so this only ever ends a stalled or dying peer.
MESSAGE_TIMEOUT = 5.0
# Room for one fd more than a request takes, so a surplus is seen (and closed), not lost
# silently by the kernel's truncation.
_ANCILLARY = socket.CMSG_SPACE((MAX_FDS + 1) * array.array("i").itemsize)


class Disconnected(Exception):
    """The peer closed the connection between messages (the normal end of a session)."""


@dataclass
class Message:
    """A request: its header, its payload, and the fds that came with it."""

    header: Header
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return request_name(self.header.request)

    def take_fds(self, count: int) -> list[int]:
        """Exactly ``count`` fds, now owned by the caller; any others are closed. A wrong
        number is refused (and every fd closed)."""
        fds, self.fds = self.fds, []
        if len(fds) != count:
            close_fds(fds)
            raise ProtocolError(f"{self.name}: {len(fds)} fds passed, {count} expected")
        return fds

    def close(self) -> None:
        close_fds(self.fds)
        self.fds = []


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints = array.array("i")
            whole = len(data) - len(data) % ints.itemsize
            ints.frombytes(data[:whole])
            fds.extend(ints)
    return fds


class Channel:
    """One end of a connection (a connected ``AF_UNIX`` ``SOCK_STREAM``); ``peer`` is what
    the other end is ("frontend" or "backend"), for the errors' wording."""

    def __init__(self, sock: socket.socket, *, timeout: float = MESSAGE_TIMEOUT,
                 peer: str = "frontend") -> None:
        self.sock = sock
        self.timeout = timeout
        self.peer = peer
        self._send_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        sock.setblocking(False)

    def _wait(self, deadline: float | None, silent: bool) -> None:
        """Until the socket is readable; ``Disconnected`` on close(), ProtocolError past the
        deadline (``silent``: no byte of the message came yet, a reply awaited)."""
        while True:
            if self._closed:
                raise Disconnected("the channel was closed")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock.fileno(), self._wake_r], [], [], left)
            if self._wake_r in ready or self._closed:
                raise Disconnected("the channel was closed")
            if self.sock.fileno() in ready:
                return
            if deadline is not None and time.monotonic() >= deadline:
                what = "did not reply within" if silent else "stopped mid-message for"
                raise ProtocolError(f"the {self.peer} {what} {self.timeout} s", fatal=True)

    def _read(self, count: int, fds: list[int], deadline: float | None, *,
              reply: bool = False) -> bytes:
        """Exactly ``count`` bytes (their fds appended to ``fds``); b"" for EOF before any.
        ``reply``: the start of a reply, awaited since ``deadline`` was set."""
        data = bytearray()
        while len(data) < count:
            self._wait(deadline, reply and not data)
            try:
                chunk, ancdata, flags, _ = self.sock.recvmsg(count - len(data), _ANCILLARY,
                                                             socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                chunk, ancdata, flags = b"", [], 0
            fds.extend(_fds_of(ancdata))
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("more fds than any request takes", fatal=True)
            if not chunk:
                if not data and deadline is None:
                    return b""
                if reply and not data:
                    raise ProtocolError(f"the {self.peer} closed the connection instead of "
                                        "replying", fatal=True)
                raise ProtocolError(f"the {self.peer} closed the connection mid-message "
                                    f"({len(data)} of {count} bytes)", fatal=True)
            data += chunk
            if deadline is None:
                deadline = time.monotonic() + self.timeout
        return bytes(data)

    def receive(self, *, reply_to: int | None = None) -> Message:
        """The next whole request. ``Disconnected`` when the peer closed between messages;
        ``ProtocolError`` (fatal) for a malformed or torn one, its fds closed.

        ``reply_to``: the frontend's side, waiting for the backend's reply to that request:
        it must begin within the timeout too (a backend that never replies is a dead one),
        and its header is a reply's."""
        fds: list[int] = []
        try:
            first = None if reply_to is None else time.monotonic() + self.timeout
            raw = self._read(HEADER.size, fds, first, reply=reply_to is not None)
            if not raw:
                raise Disconnected(f"the {self.peer} closed the connection")
            header = (decode_header(raw) if reply_to is None
                      else decode_reply_header(raw, reply_to))
            deadline = time.monotonic() + self.timeout
            payload = self._read(header.size, fds, deadline) if header.size else b""
        except BaseException:
            close_fds(fds)
            raise
        return Message(header, payload, fds)

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        """Write one whole message, ``fds`` passed with its first byte; ProtocolError
        (fatal) if the peer cannot take it within the timeout (a peer that stopped
        reading) or is gone."""
        with self._send_lock:
            view = memoryview(data)
            deadline = time.monotonic() + self.timeout
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
                if fds else []
            while view:
                try:
                    sent = self.sock.sendmsg([view], ancillary, socket.MSG_NOSIGNAL)
                    ancillary = []
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([], [self.sock], [], left)[1]:
                        raise ProtocolError(f"the {self.peer} does not read what is sent",
                                            fatal=True) from None
                    continue
                except OSError as exc:
                    raise ProtocolError(f"cannot reply: {exc.strerror}", fatal=True) from None
                view = view[sent:]

    def shutdown(self) -> None:
        """From any thread: end the connection; a receive() waiting returns Disconnected.
        The fds stay open until :meth:`close` (by the thread that receives)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Release the socket: by the thread that received, once it stopped."""
        self.shutdown()
        if self._wake_r < 0:
            return
        self.sock.close()
        os.close(self._wake_w)
        os.close(self._wake_r)
        self._wake_r = self._wake_w = -1
