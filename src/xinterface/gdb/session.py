"""One GDB connection: packets in, replies out, the stub's handlers in between.

Everything the peer sends is untrusted: a bad checksum is answered ``-``, an unknown packet
with the empty reply, a malformed one with ``E16`` (EINVAL), a packet past
:data:`.packets.MAX_PACKET` closes the connection. A connection that ends without ``D``
detaches: breakpoints out, the guest running on.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator

from . import target
from .packets import PACKET_SIZE, ProtocolError, Reader, frame, unescape
from .stub import SIGTRAP, Stub

_ERR_INVALID = "E16"
_ERR_FAULT = "E0e"


class Session:
    def __init__(self, stub: Stub, sock: socket.socket) -> None:
        self.stub = stub
        self.sock = sock
        self.reader = Reader()
        self.pending: list[tuple[str, bytes]] = []
        self.ack = True
        self.interrupt = False
        self.done = False

    # --- the wire --------------------------------------------------------------------------
    def _receive(self, timeout: float | None) -> bool:
        """Read what the peer sent into ``pending``; False at EOF."""
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return True
        data = self.sock.recv(65536)
        if not data:
            return False
        for event in self.reader.feed(data):
            if event[0] == "interrupt":
                self.interrupt = True
            elif event[0] == "bad":
                self.sock.sendall(b"-")
            elif event[0] == "packet":
                self.pending.append(event)
        return True

    def send(self, reply: str | bytes) -> None:
        data = reply.encode() if isinstance(reply, str) else reply
        self.sock.sendall(frame(data))

    def _interrupted(self) -> bool:
        if not self._receive(0):
            self.done = True
            return True
        hit, self.interrupt = self.interrupt, False
        return hit

    @contextlib.contextmanager
    def watch(self, kick: Callable[[], None]) -> Iterator[None]:
        """While the body runs (a step that may wait in ``KVM_RUN``), a thread reads the
        peer: Ctrl-C or the end of the connection calls ``kick``, which ends the step.
        Packets that come meanwhile are kept for after it."""
        done = threading.Event()

        def look() -> None:
            try:
                while not done.is_set():
                    if not self._receive(0.05):
                        self.done = True
                        kick()
                        return
                    if self.interrupt:
                        self.interrupt = False
                        kick()
                        return
            except (OSError, ProtocolError):
                self.done = True
                kick()

        watcher = threading.Thread(target=look, name="xinterface-gdb-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()

    def serve(self) -> None:
        try:
            self._serve()
        except (OSError, ProtocolError):
            pass
        finally:
            self.stub.detach()

    def _serve(self) -> None:
        self.send_later: str | None = None
        while not self.done:
            while not self.pending:
                if not self._receive(None):
                    return
                if self.interrupt:
                    self.interrupt = False  # already stopped: nothing to interrupt
            _, body = self.pending.pop(0)
            if self.ack:
                self.sock.sendall(b"+")
            reply = self.handle(body)
            if reply is None:
                return
            self.send(reply)
            if body[:1] in (b"D", b"k") or (isinstance(reply, str) and reply[:1] == "W"):
                return  # detached, killed, or the run is over

    # --- the commands ----------------------------------------------------------------------
    def handle(self, body: bytes) -> str | bytes | None:
        try:
            return self._dispatch(body)
        except (ValueError, IndexError):
            return _ERR_INVALID
        except OSError:
            return _ERR_FAULT

    def _dispatch(self, body: bytes) -> str | bytes | None:
        stub = self.stub
        text = body.decode("latin-1")
        head = text[:1]
        if text.startswith("qSupported"):
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;vContSupported+;"
                    "swbreak+;hwbreak+;QStartNoAckMode+")
        if text == "QStartNoAckMode":
            self.ack = False
            return "OK"
        if text.startswith("qXfer:features:read:target.xml:"):
            offset, length = (int(v, 16) for v in text.rsplit(":", 1)[1].split(","))
            xml = stub.arch().xml()
            chunk = xml[offset : offset + length]
            return (b"l" if offset + length >= len(xml) else b"m") + chunk
        if text == "?":
            return stub.stop_reply(stub.last_stop[0], SIGTRAP, stub.last_stop[1])
        if text in ("qfThreadInfo",):
            return "m" + ",".join(f"{loop.index + 1:x}" for loop in stub.machine.vcpus)
        if text == "qsThreadInfo":
            return "l"
        if text == "qC":
            return f"QC{stub.current + 1:x}"
        if text == "qAttached":
            return "1"
        if text.startswith("qRcmd,"):
            command = bytes.fromhex(text[6:]).decode("utf-8", "replace")
            out = stub.monitor(command) if stub.monitor else "no monitor commands\n"
            return out.encode().hex()
        if head == "H":
            try:
                thread = self._thread(text[2:])
            except ValueError:
                return "E01"
            if thread is not None:
                stub.current = thread
            return "OK"
        if head == "T":
            try:
                return "OK" if self._thread(text[1:]) is not None else "E01"
            except ValueError:
                return "E01"
        if head == "g":
            return self._registers()
        if head == "G":
            return self._write_registers(bytes.fromhex(text[1:].replace("x", "0")))
        if head == "p":
            return self._register(int(text[1:], 16))
        if head == "P":
            number, value = text[1:].split("=")
            return self._write_register(int(number, 16), bytes.fromhex(value))
        if head == "m":
            addr, length = (int(v, 16) for v in text[1:].split(","))
            if length > PACKET_SIZE // 2:
                return _ERR_INVALID
            return stub.read_memory(addr, length).hex()
        if head == "M":
            where, data = text[1:].split(":")
            addr, length = (int(v, 16) for v in where.split(","))
            payload = bytes.fromhex(data)
            if len(payload) != length:
                return _ERR_INVALID
            stub.write_memory(addr, payload)
            return "OK"
        if head == "X":
            colon = body.index(b":")
            addr, length = (int(v, 16) for v in body[1:colon].decode().split(","))
            payload = unescape(body[colon + 1 :])
            if len(payload) != length:
                return _ERR_INVALID
            if length:
                stub.write_memory(addr, payload)
            return "OK"
        if head in ("Z", "z"):
            kind, addr, _ = (int(v, 16) for v in text[1:].split(",")[:3])
            return stub.insert(kind, addr) if head == "Z" else stub.remove(kind, addr)
        if text == "vCont?":
            return "vCont;c;C;s;S"
        if text.startswith("vCont;"):
            return self._vcont(text[6:].split(";"))
        if head in ("c", "C"):
            return self._continue()
        if head in ("s", "S"):
            return stub.step(stub.current, self.watch)
        if head == "D":
            stub.detach()
            return "OK"
        if head == "k":
            stub.remove_all()
            stub.machine.stop()
            return "OK"
        return ""

    def _thread(self, text: str) -> int | None:
        """A thread id (vCPU index + 1) of H/T as a vCPU index; None for ``-1``/``0``
        (any); ValueError for one that is no vCPU."""
        if text in ("-1", "0"):
            return None
        index = int(text, 16) - 1
        if not 0 <= index < len(self.stub.machine.vcpus):
            raise ValueError(text)
        return index

    def _vcont(self, actions: list[str]) -> str | None:
        for action in actions:
            what, _, thread = action.partition(":")
            if what[:1] in ("s", "S"):
                index = self.stub.current if not thread or thread == "-1" else \
                    int(thread, 16) - 1
                if not 0 <= index < len(self.stub.machine.vcpus):
                    return _ERR_INVALID
                return self.stub.step(index, self.watch)
        return self._continue()

    def _continue(self) -> str | None:
        pending = self.stub.cont(self.watch)
        if pending is not None:
            return pending
        reply = self.stub.wait_stop(self._interrupted)
        if self.done:
            return None
        return reply

    def _registers(self) -> str:
        loop = self.stub._loop()
        regs, sregs = loop.vcpu.get_regs(), loop.vcpu.get_sregs()
        out = []
        for reg in self.stub.arch().registers:
            value = target.read(reg, regs, sregs)
            out.append(value.hex() if value is not None else "xx" * (reg.bits // 8))
        return "".join(out)

    def _register(self, number: int) -> str:
        registers = self.stub.arch().registers
        if not 0 <= number < len(registers):
            return _ERR_INVALID
        loop = self.stub._loop()
        reg = registers[number]
        value = target.read(reg, loop.vcpu.get_regs(), loop.vcpu.get_sregs())
        return value.hex() if value is not None else "xx" * (reg.bits // 8)

    def _write_register(self, number: int, data: bytes) -> str:
        registers = self.stub.arch().registers
        if not 0 <= number < len(registers):
            return _ERR_INVALID
        return self._store([(registers[number], data)])

    def _write_registers(self, data: bytes) -> str:
        pairs = []
        at = 0
        for reg in self.stub.arch().registers:
            size = reg.bits // 8
            if at + size > len(data):
                break
            if reg.source.startswith(("regs:", "sregs:")):
                pairs.append((reg, data[at : at + size]))
            at += size
        return self._store(pairs)

    def _store(self, pairs: list[tuple[target.Register, bytes]]) -> str:
        vcpu = self.stub._loop().vcpu
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        sregs_changed = False
        for reg, data in pairs:
            if not target.write(reg, data, regs, sregs):
                return "E01"
            sregs_changed |= reg.source.startswith("sregs:")
        vcpu.set_regs(regs)
        if sregs_changed:
            vcpu.set_sregs(sregs)
        return "OK"


Monitor = Callable[[str], str]
