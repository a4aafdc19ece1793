"""The assembler step: `.include` finds files next to the source, and the cache knows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinterface.loader import AssemblerError, assemble


def test_include_next_to_the_source_and_the_cache_follows_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "guest.S"
    source.write_text('        .include "bytes.inc"\n        emit 7\n')
    include = tmp_path / "bytes.inc"
    include.write_text("        .macro emit n\n        .byte \\n, \\n\n        .endm\n")
    assert assemble(source, gpa=0x1000) == b"\x07\x07"
    # Only the include changed: a cache keyed on the source alone would give the old bytes.
    include.write_text("        .macro emit n\n        .byte \\n, \\n, \\n\n        .endm\n")
    assert assemble(source, gpa=0x1000) == b"\x07\x07\x07"


def test_a_missing_include_is_the_assemblers_message(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "guest.S"
    source.write_text('        .include "nowhere.inc"\n')
    with pytest.raises(AssemblerError, match=r"nowhere\.inc"):
        assemble(source, gpa=0x1000)
