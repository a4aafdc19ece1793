"""The QMP server: a UNIX socket that any number of clients connect to in turn, with QEMU's
``-qmp unix:PATH,server=on,wait=off`` semantics (the guest runs whether or not anyone is
connected).

Each client gets the greeting, negotiates with ``qmp_capabilities``, then sends commands and
receives events (QEMU's docs/interop/qmp-spec). Clients are untrusted and never reach the
guest's pace: each has a reader thread that runs its commands and a writer thread that
drains a bounded queue of replies and events. A client that stops reading fills its queue
and is dropped; one that floods is read as fast as its commands run; one that sends a
message past the size bound, or disconnects, ends only its own connection. ``close()``
ends every connection and joins every thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import stat
import threading
import time
from typing import Any

from ..errors import XInterfaceError
from . import commands, snapshots  # noqa: F401  (snapshots: registers x-snapshot-*)
from .controls import Controls
from .framing import BadMessage, Decoder, FramingError, encode

log = logging.getLogger("xinterface.qmp")

MAX_CLIENTS = 8      # connected at once; more wait in the listen backlog
BACKLOG = 128
CLOSE_GRACE = 1.0    # seconds close() lets clients take their last messages
OUTBOX = 1024        # replies and events a client may leave unread before it is dropped
_READ_SIZE = 65536


def parse_address(text: str) -> str:
    """``unix:PATH`` (QEMU's ``-qmp`` syntax; ``,server=on,wait=off`` accepted, the only
    mode there is) -> PATH; ``ValueError`` for anything else."""
    kind, _, rest = text.partition(":")
    if kind != "unix" or not rest:
        raise ValueError(f"{text!r} is not unix:PATH")
    path, *options = rest.split(",")
    for option in options:
        if option not in ("server", "server=on", "wait=off", "nowait"):
            raise ValueError(f"{option!r}: only server=on,wait=off is supported")
    if not path:
        raise ValueError(f"{text!r} is not unix:PATH")
    return path


def greeting() -> dict[str, Any]:
    version = commands.version_info()
    return {"QMP": {"version": version, "capabilities": []}}


class _Client:
    def __init__(self, server: QmpServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.outbox: queue.Queue[bytes | None] = queue.Queue(OUTBOX)
        self.negotiated = False
        self.dropped = False
        self.reader = threading.Thread(target=self._read, name="qmp-client", daemon=True)
        self.writer = threading.Thread(target=self._write, name="qmp-writer", daemon=True)

    def start(self) -> None:
        self.send(greeting())
        self.writer.start()
        self.reader.start()

    def send(self, message: dict[str, Any]) -> None:
        if self.dropped:
            return
        try:
            self.outbox.put_nowait(encode(message))
        except queue.Full:
            log.warning("QMP client dropped: %d messages unread", OUTBOX)
            self.drop()

    def event(self, name: str, data: dict[str, Any]) -> None:
        if not self.negotiated:
            return  # QEMU sends events only after capabilities negotiation
        now = time.time()
        self.send({"event": name, "data": data,
                   "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}})

    def drop(self) -> None:
        """End this connection (from any thread): both threads then leave."""
        self.dropped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(queue.Full):
            self.outbox.put_nowait(None)

    def finish(self, grace: float) -> None:
        """Send what is queued (the last events: ``SHUTDOWN``) for up to ``grace`` seconds,
        then end the connection: a client that does not read cannot hold close() longer."""
        with contextlib.suppress(queue.Full):
            self.outbox.put_nowait(None)
        if self.writer.ident is not None and self.writer is not threading.current_thread():
            self.writer.join(grace)
        self.drop()

    def _write(self) -> None:
        try:
            while True:
                data = self.outbox.get()
                if data is None or self.dropped:
                    return
                self.sock.sendall(data)
        except OSError:
            self.drop()

    def _read(self) -> None:
        decoder = Decoder()
        try:
            while not self.dropped:
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    return
                for message in decoder.feed(data):
                    if self.dropped:
                        return
                    self._answer(message)
        except FramingError as exc:
            log.warning("QMP client dropped: %s", exc)
            self.send({"error": {"class": commands.GENERIC_ERROR, "desc": str(exc)}})
        except OSError:
            pass
        finally:
            self.server.forget(self)
            self.drop()

    def _answer(self, message: dict[str, Any] | BadMessage) -> None:
        if isinstance(message, BadMessage):
            self._error(None, str(message))
            return
        ident = message.get("id")
        name = message.get("execute", message.get("exec-oob"))
        if name is None:
            self._error(message, "QMP input lacks member 'execute'")
            return
        unexpected = sorted(message.keys() - {"execute", "arguments", "id"})
        if unexpected:
            self._error(message, f"QMP input member '{unexpected[0]}' is unexpected")
            return
        arguments = message.get("arguments", {})
        if not isinstance(name, str):
            self._error(message, "QMP input member 'execute' must be a string")
            return
        if not isinstance(arguments, dict):
            self._error(message, "QMP input member 'arguments' must be an object")
            return
        if name == "qmp_capabilities":
            if self.negotiated:
                self._error(message, "Capabilities negotiation is already complete, "
                            "command ignored", commands.COMMAND_NOT_FOUND)
                return
            if arguments.keys() - {"enable"} or arguments.get("enable"):
                self._error(message, "this server has no optional capabilities")
                return
            self.negotiated = True
            self._reply(ident, {})
            return
        if not self.negotiated:
            self._error(message, "Expecting capabilities negotiation with 'qmp_capabilities'",
                        commands.COMMAND_NOT_FOUND)
            return
        try:
            result = commands.execute(self.server.controls, name, arguments)
        except commands.QmpError as exc:
            self._error(message, exc.desc, exc.error_class)
            return
        except (XInterfaceError, OSError) as exc:  # the machine refused: the client is told
            self._error(message, str(exc))
            return
        self._reply(ident, result)

    def _reply(self, ident: Any, result: Any) -> None:
        self.send({"return": result} | ({} if ident is None else {"id": ident}))

    def _error(self, message: dict[str, Any] | None, desc: str,
               error_class: str = commands.GENERIC_ERROR) -> None:
        reply: dict[str, Any] = {"error": {"class": error_class, "desc": desc}}
        if message is not None and "id" in message:
            reply["id"] = message["id"]
        self.send(reply)


class QmpServer:
    """Listen on ``path`` for QMP clients of ``controls``' machine until :meth:`close`.

    A stale socket file at ``path`` (one nothing listens on) is replaced; any other file is
    ``EEXIST`` (``argument="qmp"``).
    """

    def __init__(self, path: str, controls: Controls) -> None:
        self.path = path
        self.controls = controls
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)   # a client left, or close()
        self._clients: list[_Client] = []   # connected
        self._threads: list[_Client] = []   # every client whose threads are not joined yet
        self._closed = False
        self._sock = _listen(path)
        self._accepter = threading.Thread(target=self._accept, name="qmp-accept", daemon=True)
        controls.listen(self._event)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            # At MAX_CLIENTS, the next ones wait in the listen backlog (as QEMU's monitor
            # takes one client at a time) until a connection ends.
            with self._lock:
                self._room.wait_for(lambda: self._closed or len(self._clients) < MAX_CLIENTS)
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return  # close() shut the socket down
            with self._lock:
                self._reap()
                if self._closed:
                    sock.close()
                    return
                client = _Client(self, sock)
                self._clients.append(client)
                self._threads.append(client)
                client.start()

    def _reap(self) -> None:
        """Join the threads of clients that are gone (lock held), so reconnecting clients
        leave nothing behind."""
        for client in [c for c in self._threads if c not in self._clients]:
            if not client.reader.is_alive() and not client.writer.is_alive():
                client.reader.join()
                client.writer.join()
                client.sock.close()
                self._threads.remove(client)

    def forget(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
                self._room.notify_all()

    def _event(self, name: str, data: dict[str, Any]) -> None:
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.event(name, data)

    def close(self) -> None:
        """Stop listening, end every connection, join every thread, remove the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._room.notify_all()
        self.controls.unlisten(self._event)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._accepter.join()
        self._sock.close()
        with self._lock:   # the accepter is gone: no client is added any more
            clients = list(self._threads)
            self._threads.clear()
        end = time.monotonic() + CLOSE_GRACE
        for client in clients:
            client.finish(max(0.0, end - time.monotonic()))
        me = threading.current_thread()
        for client in clients:
            for thread in (client.reader, client.writer):
                if thread is not me and thread.ident is not None:
                    thread.join()
            client.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> QmpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISSOCK(mode):
            raise XInterfaceError(errno.EEXIST, f"{path} exists and is not a socket",
                                  argument="qmp", value=path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nothing listens on it
        else:
            raise XInterfaceError(errno.EADDRINUSE, f"{path}: another process listens on it",
                                  argument="qmp", value=path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # A deep backlog: a client that finds it full gets EAGAIN from a non-blocking
        # connect(), which asyncio's clients (qemu.qmp) take for a connection.
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise XInterfaceError(exc.errno or errno.EIO, f"{path}: {exc.strerror}",
                              argument="qmp", value=path) from None
    return sock
