"""Framing of the GDB remote serial protocol (GDB manual, "Overview" of Remote Protocol).

A packet is ``$data#cc``, ``cc`` the two hex digits of the modulo-256 sum of ``data``; the
receiver acknowledges with ``+`` (or ``-``: send again) until no-ack mode. Byte 0x03 outside a
packet is an interrupt (Ctrl-C). In binary data (``X``) ``}`` escapes the next byte, XORed
with 0x20.
"""

from __future__ import annotations

from collections.abc import Iterator

INTERRUPT = b"\x03"
# The largest packet this stub accepts (and says so in qSupported): enough for a G of the
# x86-64 register set and a 16 KiB X; a longer one closes the connection.
PACKET_SIZE = 0x4000
MAX_PACKET = 2 * PACKET_SIZE + 64


class ProtocolError(Exception):
    """The peer broke the framing beyond repair (a packet longer than :data:`MAX_PACKET`)."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """``data`` as a packet on the wire, with ``#$}*`` escaped."""
    escaped = escape(data)
    return b"$" + escaped + b"#" + b"%02x" % checksum(escaped)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in b"#$}*":
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(byte)
    return bytes(out)


class Reader:
    """Splits the bytes a peer sends into events: ``("packet", data)`` for a packet with a
    good checksum, ``("bad", b"")`` for one with a bad checksum (answer ``-``),
    ``("interrupt", b"")`` for Ctrl-C, ``("ack", b"+")`` / ``("ack", b"-")``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        buf = self._buf
        buf += data
        while buf:
            first = buf[0]
            if first == 0x24:  # '$'
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    if len(buf) > MAX_PACKET:
                        raise ProtocolError(f"a packet longer than {MAX_PACKET} bytes")
                    return
                body = bytes(buf[1:end])
                digits = bytes(buf[end + 1 : end + 3])
                del buf[: end + 3]
                try:
                    good = int(digits, 16) == checksum(body)
                except ValueError:
                    good = False
                yield ("packet", body) if good else ("bad", b"")
            elif first == 0x03:
                del buf[0]
                yield "interrupt", b""
            elif first in b"+-":
                del buf[0]
                yield "ack", bytes((first,))
            else:
                del buf[0]  # noise between packets is ignored, as GDB's own stubs do
