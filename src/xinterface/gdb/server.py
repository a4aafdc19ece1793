"""The listener: ``tcp::PORT`` (loopback), ``tcp:HOST:PORT`` or ``unix:PATH``; one debugger
at a time. A second connection while one is attached is closed at once; a connection that
leaves before it attached changes nothing, and the next one is served."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections import Counter

from ..errors import XInterfaceError
from ..kvm import uapi
from . import target
from .packets import ProtocolError
from .session import Session
from .stub import Debuggee, Stub


def listen(address: str) -> socket.socket:
    """A listening socket for ``address``; ``EINVAL`` (``argument="gdb"``) if it is not one."""
    kind, _, rest = address.partition(":")
    try:
        if kind == "unix" and rest:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(rest)
            sock.bind(rest)
        elif kind == "tcp" and ":" in rest:
            host, _, port = rest.rpartition(":")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "127.0.0.1", int(port)))
        else:
            raise ValueError(address)
    except ValueError:
        raise XInterfaceError(errno.EINVAL, f"{address!r} is not tcp::PORT, tcp:HOST:PORT or "
                              "unix:PATH", argument="gdb", value=address) from None
    except OSError as exc:
        raise XInterfaceError(exc.errno or errno.EIO, f"gdb address {address}: "
                              f"{exc.strerror}", argument="gdb", value=address) from None
    sock.listen(8)
    return sock


_MAX_WAITING = 4


class GdbServer:
    """Serves one machine to GDB from a thread; :meth:`close` ends it (the machine's close
    does too)."""

    def __init__(self, machine: Debuggee, sock: socket.socket, *, wait: bool,
                 arch: str | None = None) -> None:
        self.machine = machine
        self.sock = sock
        self.stub = Stub(machine, wait=wait, monitor=self.monitor,
                         arch=None if arch is None else target.ARCHES[arch])
        self.address = sock.getsockname()
        self._closed = False
        self._busy = threading.Lock()
        self._client: socket.socket | None = None
        self._session: threading.Thread | None = None
        self._count = threading.Lock()
        self._waiting = 0  # connections waiting for the one being served to leave
        self.thread = threading.Thread(target=self._accept, name="xinterface-gdb", daemon=True)

    @classmethod
    def start(cls, machine: Debuggee, address: str, *, wait: bool = False,
              arch: str | None = None) -> GdbServer:
        if arch is not None and arch not in target.ARCHES:
            raise XInterfaceError(errno.EINVAL, f"arch {arch!r} is not one of "
                                  f"{', '.join(target.ARCHES)}", argument="arch", value=arch)
        server = cls(machine, listen(address), wait=wait, arch=arch)
        machine.debugger = server  # type: ignore[attr-defined]
        server.thread.start()
        return server

    # --- vcpu_loop.DebugHook, through the stub ----------------------------------------------
    def hold(self, loop: object) -> bool:
        return self.stub.hold(loop)  # type: ignore[arg-type]

    def stop(self, loop: object, exit: object) -> bool:
        return self.stub.stop(loop, exit)  # type: ignore[arg-type]

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._count:
                if self._waiting >= _MAX_WAITING:
                    client.close()  # a flood: turned away at once
                    continue
                self._waiting += 1
            threading.Thread(target=self._admit, args=(client,), name="xinterface-gdb-client",
                             daemon=True).start()

    def _admit(self, client: socket.socket) -> None:
        """One debugger at a time; a moment's grace for one that is just leaving."""
        admitted = self._busy.acquire(timeout=1.0)
        with self._count:
            self._waiting -= 1
        if not admitted or self._closed:
            client.close()
            if admitted:
                self._busy.release()
            return
        self._session = threading.current_thread()
        self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        self._client = client
        try:
            session = Session(self.stub, client)
            if not self._closed:
                # Wait for the first packet before stopping the guest: a connection that
                # leaves at once changes nothing.
                alive = True
                while alive and not (session.pending or session.interrupt):
                    alive = session._receive(None)
                if alive:
                    reply = self.stub.attach()
                    if reply.startswith("W"):
                        return
                    session.serve()
        except (OSError, ProtocolError):
            pass
        finally:
            self._client = None
            with contextlib.suppress(OSError):
                client.close()
            self._busy.release()

    def monitor(self, command: str) -> str:
        """``monitor exits``: exits per vCPU by kind; ``monitor ranges``: the buses' xioevents
        and range devices; ``monitor help``."""
        words = command.split()
        if words[:1] == ["exits"]:
            lines = []
            for loop in self.machine.vcpus:
                counts = Counter({uapi.EXIT_REASON_NAMES.get(code, str(code)).lower(): n
                                  for code, n in enumerate(loop.counts) if n})
                lines.append(f"vcpu{loop.index}: " + ", ".join(
                    f"{name} {n}" for name, n in sorted(counts.items())))
            return "\n".join(lines) + "\n"
        if words[:1] in (["ranges"], ["xioevents"]):
            vm = getattr(self.machine, "vm", None)
            lines = []
            for bus in (getattr(vm, "pio_bus", None), getattr(vm, "mmio_bus", None)):
                if bus is None:
                    continue
                for addr, entry in sorted(bus.events.items()):
                    lines.append(f"{bus.space} xioevent {addr:#x}: {entry!r}")
                for device in getattr(bus, "ranges", ()):
                    lines.append(f"{bus.space} range {device!r}")
            return "\n".join(lines) + "\n" if lines else "none\n"
        return "monitor commands: exits, ranges (xioevents and range devices), help\n"

    def close(self) -> None:
        """Stop listening, end the connection, release any vCPU held for a debugger."""
        if self._closed:
            return
        self._closed = True
        self.stub.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        session = self._session
        if session is not None and session is not threading.current_thread():
            # A session waiting for a stop sends the run's end (W) first; one that waits
            # for a packet is cut off below.
            session.join(0.5)
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        if isinstance(self.address, str):
            with contextlib.suppress(OSError):
                os.unlink(self.address)
