"""QMP's framing, byte by byte: messages split anywhere, strings with braces, the bound."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xinterface.qmp.framing import BadMessage, Decoder, FramingError

MESSAGES = [{"execute": "query-status", "id": 1},
            {"execute": "human-monitor-command",
             "arguments": {"command-line": "info \"{[registers]}\" \\"}}]


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
def test_split_anywhere_gives_the_same_messages(cuts: list[int]) -> None:
    stream = b" \r\n".join(json.dumps(m).encode() for m in MESSAGES) + b"\n"
    decoder = Decoder()
    out: list[object] = []
    at = 0
    for cut in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        out += decoder.feed(stream[at:at + cut])
        at += cut
        if at >= len(stream):
            break
    out += decoder.feed(stream[at:])
    assert out == MESSAGES


def test_bad_messages_are_answered_then_skipped() -> None:
    decoder = Decoder()
    out = list(decoder.feed(b'{"a": 1, }[1]\nnonsense\n{"ok": true}'))
    assert [type(m) for m in out] == [BadMessage, BadMessage, BadMessage, dict]
    assert out[-1] == {"ok": True}


def test_a_message_past_the_bound_ends_the_stream() -> None:
    decoder = Decoder(limit=1000)
    list(decoder.feed(b'{"execute": "' + b"a" * 900))
    with pytest.raises(FramingError):
        list(decoder.feed(b"a" * 200))
