"""QMP's wire format: a stream of JSON objects, each of them one message (QEMU's
docs/interop/qmp-spec: "the protocol is JSON text, messages are JSON objects").

A client is untrusted: :class:`Decoder` keeps at most ``limit`` bytes of one message it has
not finished, so a flood without a closing brace costs a bounded buffer and then a
:class:`FramingError`, never memory without end. What is not JSON, or JSON that is not an
object, is a :class:`BadMessage` for the server to answer with QMP's ``GenericError`` and
go on from the next message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MESSAGE_LIMIT = 1 << 20  # bytes of one message: QEMU's JSON lexer bounds a token the same way


class FramingError(Exception):
    """The stream cannot be framed any more (a message over the size bound): drop the
    connection."""


class BadMessage(ValueError):
    """One message that is not a JSON object (answered, then skipped)."""


_decoder = json.JSONDecoder()
_WHITESPACE = b" \t\r\n"


class Decoder:
    """Bytes in, messages (dicts) or :class:`BadMessage` out, in order.

    The split is QEMU's JSON streamer's: a message ends where its braces and brackets
    balance outside strings (or at a newline after something that is no object at all).
    The scan resumes where the last ``feed`` stopped, so a message arriving in many pieces
    is read once, not once per piece.
    """

    def __init__(self, limit: int = MESSAGE_LIMIT) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._scanned = 0
        self._depth = 0
        self._in_string = self._escaped = False

    def feed(self, data: bytes) -> Iterator[dict[str, Any] | BadMessage]:
        """Every complete message ``data`` finishes; :class:`FramingError` past the bound."""
        self._buffer += data
        while True:
            if self._scanned == 0:
                start = 0
                while start < len(self._buffer) and self._buffer[start] in _WHITESPACE:
                    start += 1
                del self._buffer[:start]
            if not self._buffer:
                return
            end = self._message_end()
            if end is None:
                if len(self._buffer) > self.limit:
                    self._buffer.clear()
                    self._reset()
                    raise FramingError(f"a message longer than {self.limit} bytes")
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._reset()
            yield parse(raw)

    def _message_end(self) -> int | None:
        """Where the first message ends, or None (not complete yet; the scan's state is
        kept for the next bytes)."""
        buffer = self._buffer
        depth, in_string, escaped = self._depth, self._in_string, self._escaped
        index = self._scanned
        found = None
        while index < len(buffer):
            byte = buffer[index]
            index += 1
            if in_string:
                if escaped:
                    escaped = False
                elif byte == 0x5C:  # backslash
                    escaped = True
                elif byte == 0x22:
                    in_string = False
            elif byte == 0x22:
                in_string = True
            elif byte in b"{[":
                depth += 1
            elif byte in b"}]":
                depth -= 1
                if depth <= 0:
                    found = index
                    break
            elif depth == 0 and byte == 0x0A:
                found = index
                break
        self._depth, self._in_string, self._escaped = depth, in_string, escaped
        self._scanned = index
        return found


def parse(raw: bytes) -> dict[str, Any] | BadMessage:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return BadMessage(f"JSON parse error, {exc}")
    if not isinstance(value, dict):
        return BadMessage("QMP input must be a JSON object")
    return value


def encode(message: dict[str, Any]) -> bytes:
    """One message as QEMU sends it: compact JSON and CRLF."""
    return json.dumps(message, separators=(", ", ": ")).encode() + b"\r\n"
