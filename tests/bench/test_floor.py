"""The C floor builds and measures what it claims (no timing assertions)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import needs_kvm
from xinterface.bench.floor import MODES, FloorUnavailable, build_floor, run_floor

pytestmark = [needs_kvm, pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")]
COUNT = 2000


@pytest.mark.parametrize("mode", MODES)
def test_floor_mode(mode: str) -> None:
    try:
        result = run_floor(mode, COUNT, binary=build_floor())
    except FloorUnavailable as exc:
        pytest.fail(f"these machines have every capability the floor uses: {exc}")
    assert (result.mode, result.count) == (mode, COUNT)
    assert result.ns_per_write > 0
    if mode in ("pio", "mmio"):
        assert result.exits == COUNT + 1          # one per write, plus the hlt
    elif mode.startswith("coalesced"):
        # Ring-full exits carry their own write; the rest went through the ring.
        assert result.drained + result.exits - 1 == COUNT
        assert result.exits < COUNT // 10
    else:
        assert result.signalled == COUNT
        assert result.exits == 1


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        run_floor("teleport", 1)
