"""The remote protocol's framing: what ``frame`` sends, ``Reader`` gets back, whatever the
bytes and however the stream is cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xinterface.gdb.packets import MAX_PACKET, ProtocolError, Reader, frame, unescape


@given(st.lists(st.binary(max_size=64), max_size=5), st.integers(1, 7))
def test_framed_packets_come_back_whole_however_the_stream_is_cut(
        bodies: list[bytes], cut: int) -> None:
    wire = b"".join(frame(b) for b in bodies)
    reader = Reader()
    got = []
    for at in range(0, len(wire), cut):
        got += [unescape(data) for kind, data in reader.feed(wire[at : at + cut])
                if kind == "packet"]
    assert got == bodies


def test_a_bad_checksum_interrupts_and_acks_are_told_apart() -> None:
    events = list(Reader().feed(b"+$qC#00\x03-$qC#b4junk"))
    assert events == [("ack", b"+"), ("bad", b""), ("interrupt", b""), ("ack", b"-"),
                      ("packet", b"qC")]


def test_a_packet_without_end_is_refused_past_the_limit() -> None:
    reader = Reader()
    assert list(reader.feed(b"$" + b"a" * (MAX_PACKET - 1))) == []
    with pytest.raises(ProtocolError):
        list(reader.feed(b"a" * 64))
