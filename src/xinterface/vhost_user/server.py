"""Listen for vhost-user frontends and serve them one at a time, as qemu-storage-daemon
does: when a frontend goes (it disconnected, crashed, or broke the protocol), the device is
reset and the next frontend that connects gets it.

The socket is the spec's "Backend program conventions": ``--socket-path`` (created here, a
stale socket at that path replaced) or ``--fd`` (a listening socket inherited, or one
connected socket served once).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import sys
import threading
from pathlib import Path

from ..errors import XInterfaceError
from ..virtio.device import VirtioDevice
from .channel import MESSAGE_TIMEOUT, Channel
from .session import Report, Session


def stderr_report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def listen(path: str | os.PathLike[str]) -> socket.socket:
    """A listening UNIX socket at ``path``; a socket file left there by a backend that died
    is replaced, anything else at that path is refused (``EEXIST``)."""
    target = Path(path)
    try:
        if stat.S_ISSOCK(target.lstat().st_mode):
            target.unlink()
        else:
            raise XInterfaceError(errno.EEXIST, f"{target} exists and is not a socket",
                                  argument="socket_path", value=str(target))
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Bound under a temporary name and renamed once listening: a frontend that waits for the
    # path to appear (as QEMU's users do) must never find it before listen(), when connect()
    # is refused with ECONNREFUSED.
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        sock.bind(str(staging))
        sock.listen(1)
        os.rename(staging, target)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            staging.unlink()
        raise XInterfaceError(exc.errno or errno.EINVAL, f"cannot listen on {target}: "
                              f"{exc.strerror}", argument="socket_path",
                              value=str(target)) from None
    return sock


def adopt(fd: int) -> socket.socket:
    """The UNIX stream socket inherited as ``fd``: listening, or already connected."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise XInterfaceError(exc.errno or errno.EBADF, f"fd {fd} is not a socket: "
                              f"{exc.strerror}", argument="fd", value=fd) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise XInterfaceError(errno.ENOTSOCK, f"fd {fd} is not a UNIX stream socket",
                              argument="fd", value=fd)
    return sock


class Server:
    """Serve ``device`` on ``sock`` (see :func:`listen`, :func:`adopt`) until :meth:`stop`.
    ``report(line)``: one line per refused request or dropped frontend;
    ``message_timeout``: how long a frontend may stop in the middle of a message."""

    def __init__(self, device: VirtioDevice, sock: socket.socket, *,
                 report: Report = stderr_report,
                 message_timeout: float = MESSAGE_TIMEOUT) -> None:
        self.device = device
        self.message_timeout = message_timeout
        self.sock = sock
        self.report = report
        self.sessions = 0
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._channel: Channel | None = None
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        return bool(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))

    def serve_forever(self) -> None:
        """Accept a frontend, serve it to its end, accept the next; returns after stop()
        (or after the one connection of a connected ``--fd``)."""
        try:
            if not self.listening:
                self._serve(self.sock)
                return
            while not self._stopping:
                ready, _, _ = select.select([self.sock.fileno(), self._wake_r], [], [])
                if self._wake_r in ready:
                    break
                try:
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                self._serve(conn)
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _serve(self, conn: socket.socket) -> None:
        channel = Channel(conn, timeout=self.message_timeout)
        with self._lock:
            if self._stopping:
                channel.close()
                return
            self._channel = channel
        self.sessions += 1
        try:
            Session(self.device, channel, self.report).run()
        except Exception as exc:   # a defect of ours: reported, and the next frontend served
            self.report(f"vhost-user: session failed: {type(exc).__name__}: {exc}")
            channel.close()
        finally:
            with self._lock:
                self._channel = None

    def stop(self) -> None:
        """From any thread (or a signal handler's): the frontend served now is dropped, the
        device reset, and serve_forever() returns."""
        self._stopping = True
        with self._lock:
            channel = self._channel
        if channel is not None:
            channel.shutdown()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        self.sock.close()
