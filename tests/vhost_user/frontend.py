"""A vhost-user frontend written to the spec, for the tests: it speaks the protocol to a
backend over a UNIX socket, shares a memfd as guest memory, and drives virtqueues in it
with the project's Python driver (virtio/driver.py), through an xinterface over its own
view of that memory, as a guest driver behind QEMU would."""

from __future__ import annotations

import array
import os
import select
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from xinterface.vhost_user.interface import MemoryHost, SessionInterface
from xinterface.vhost_user.memory import MemoryTable
from xinterface.vhost_user.protocol import (
    F_PROTOCOL_FEATURES,
    HEADER,
    MEMORY_HEADER,
    MEMORY_REGION,
    U64,
    VRING_ADDR,
    VRING_STATE,
    Header,
    ProtocolFeature,
    Region,
    Request,
    encode,
)
from xinterface.vhost_user.server import Server
from xinterface.virtio.device import VirtioDevice
from xinterface.virtio.driver import QueueDriver

MEMORY = 1 << 20
USER_BASE = 0x7F00_0000_0000   # the frontend's "virtual address" of guest-physical 0
TIMEOUT = 10.0
ACKED = (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
         | 1 << ProtocolFeature.CONFIG | 1 << ProtocolFeature.RESET_DEVICE)


class Closed(Exception):
    """The backend closed the connection."""


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class Frontend:
    """One connection to a backend. ``memfd``: the guest memory shared with it."""

    def __init__(self, sock: socket.socket, memory: int = MEMORY, *,
                 sealing: bool = True) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)
        # Sealable but not sealed: the backend seals it against shrinking itself.
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
        self.memfd = os.memfd_create("vhost-user-test-ram", flags)
        os.ftruncate(self.memfd, memory)
        self.memory = memory
        # Our own view of the guest memory, for the driver.
        self.host = MemoryHost()
        self.host.memory = MemoryTable([Region(0, memory, USER_BASE, 0)], [os.dup(self.memfd)]) \
            if sealing else None
        self.intf = SessionInterface(self.host)
        self.kicks: dict[int, int] = {}
        self.calls: dict[int, int] = {}

    @classmethod
    def connect(cls, path: str | os.PathLike[str], memory: int = MEMORY, *,
                sealing: bool = True) -> Frontend:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        return cls(sock, memory, sealing=sealing)

    # --- messages -------------------------------------------------------------------------
    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
             need_reply: bool = False) -> None:
        self.send_raw(encode(request, payload, need_reply=need_reply), fds)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise Closed(f"the backend closed the connection ({len(data)} of {n} bytes)")
            data += chunk
        return data

    def receive(self) -> tuple[Header, bytes]:
        header = Header(*HEADER.unpack(self._exactly(HEADER.size)))
        return header, self._exactly(header.size)

    def call(self, request: int, payload: bytes = b"") -> bytes:
        """A request with a reply of its own: the reply's payload."""
        self.send(request, payload)
        header, reply = self.receive()
        assert header.request == request and header.flags == 0x5, header
        return reply

    def ack(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """A request sent with need_reply: the REPLY_ACK status (0 = success)."""
        self.send(request, payload, fds, need_reply=True)
        header, reply = self.receive()
        assert header.request == request and header.flags == 0x5 and len(reply) == 8, header
        status: int = U64.unpack(reply)[0]
        return status

    def closed_by_backend(self, timeout: float = TIMEOUT) -> bool:
        """Whether the backend dropped the connection (EOF within ``timeout``)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    # --- the usual set-up -----------------------------------------------------------------
    def negotiate(self, features: int | None = None, protocol: int = ACKED) -> int:
        """GET/SET_FEATURES (all offered by default), protocol features, SET_OWNER; the
        features set."""
        offered: int = U64.unpack(self.call(Request.GET_FEATURES))[0]
        assert offered >> F_PROTOCOL_FEATURES & 1
        wanted = offered if features is None else features
        their: int = U64.unpack(self.call(Request.GET_PROTOCOL_FEATURES))[0]
        self.send(Request.SET_PROTOCOL_FEATURES, U64.pack(protocol & their))
        assert self.ack(Request.SET_FEATURES, U64.pack(wanted)) == 0
        assert self.ack(Request.SET_OWNER) == 0
        return wanted

    def mem_table(self, regions: Sequence[Region] | None = None,
                  fds: Sequence[int] | None = None) -> int:
        regions = [Region(0, self.memory, USER_BASE, 0)] if regions is None else regions
        fds = [self.memfd] * len(regions) if fds is None else fds
        payload = MEMORY_HEADER.pack(len(regions), 0) + b"".join(
            MEMORY_REGION.pack(*r) for r in regions)
        return self.ack(Request.SET_MEM_TABLE, payload, fds)

    def start_ring(self, index: int, q: QueueDriver, *, base: int = 0,
                   user_offset: int = USER_BASE) -> int:
        """SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE for the queue ``q`` drives: the
        REPLY_ACK status of SET_VRING_KICK (which starts it)."""
        state = VRING_STATE.pack
        assert self.ack(Request.SET_VRING_NUM, state(index, q.size)) == 0
        addr = VRING_ADDR.pack(index, 0, q.desc_addr + user_offset, q.used_addr + user_offset,
                               q.avail_addr + user_offset, 0)
        assert self.ack(Request.SET_VRING_ADDR, addr) == 0
        assert self.ack(Request.SET_VRING_BASE, state(index, base)) == 0
        call = self.calls.setdefault(index, new_eventfd())
        assert self.ack(Request.SET_VRING_CALL, U64.pack(index), [call]) == 0
        kick = self.kicks.setdefault(index, new_eventfd())
        status = self.ack(Request.SET_VRING_KICK, U64.pack(index), [kick])
        if status == 0:
            assert self.ack(Request.SET_VRING_ENABLE, state(index, 1)) == 0
        return status

    def submit(self, index: int, q: QueueDriver, buffers: Sequence[tuple[int, int, bool]]
               ) -> None:
        """Post one chain, ask for an interrupt at the next used buffer (used_event, as
        a driver does with EVENT_IDX), and kick."""
        q.set_used_event(q.used_idx)
        q.post(buffers)
        self.kick(index)

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kicks[index], 1)

    def wait_call(self, index: int, timeout: float = TIMEOUT) -> bool:
        fd = self.calls[index]
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            os.eventfd_read(fd)
        return bool(ready)

    def close(self) -> None:
        self.sock.close()
        for fd in [*self.kicks.values(), *self.calls.values()]:
            os.close(fd)
        self.kicks, self.calls = {}, {}
        self.intf.put()
        if self.host.memory is not None:
            self.host.memory.close()
        os.close(self.memfd)

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend:
    """A :class:`Server` for ``device`` on a socket in ``directory``, on a thread; the lines
    it reports are in ``lines``."""

    def __init__(self, device: VirtioDevice, directory: Path, *,
                 timeout: float = TIMEOUT) -> None:
        from xinterface.vhost_user import listen

        self.path = directory / "backend.sock"
        self.lines: list[str] = []
        self.server = Server(device, listen(self.path), report=self.lines.append,
                             message_timeout=timeout)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.serve_forever()
        except BaseException as exc:
            self.error = exc

    def connect(self, memory: int = MEMORY) -> Frontend:
        return Frontend.connect(self.path, memory)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the backend did not stop"
        self.server.close()
        assert self.error is None, self.error

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


