"""A diff snapshot writes only the pages the guest dirtied since the last snapshot, and a
restore of it (its parent's memory under its own pages) continues the exact sequence."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import needs_kvm
from xinterface import Machine
from xinterface.kvm.uapi import PAGE_SIZE
from xinterface.snapshot import restore, snapshot

from .counting import LIMIT, CountPort, continue_from, start_and_pause

pytestmark = needs_kvm


def test_diff_holds_the_dirty_pages_only_and_restores(tmp_path: Path) -> None:
    port = CountPort()
    with Machine(memory=16 << 20) as machine:
        port.attach(machine)
        thread = start_and_pause(machine, port, 100)
        full = snapshot(machine, tmp_path / "full")
        assert machine.resume()
        while len(port.seen) < 400:
            time.sleep(0.001)
        assert machine.pause()
        last = port.seen[-1]
        diff = snapshot(machine, tmp_path / "diff", diff=True)
        machine.stop()
        thread.join(30)
    # The guest wrote its counter's page only (and the stack page, never: it has no calls).
    (entry,) = diff["memory"]
    assert entry["runs"] and sum(count for _, count in entry["runs"]) <= 2
    assert entry["written"] == sum(count for _, count in entry["runs"]) * PAGE_SIZE
    assert diff["parent"] == str(tmp_path / "full") and full["parent"] is None
    assert (tmp_path / "diff" / "mem-0.bin").stat().st_blocks * 512 <= 2 * PAGE_SIZE + 4096
    _, seen = continue_from(str(tmp_path / "diff"))
    assert seen == list(range(last + 1, LIMIT + 1))


def test_a_diff_needs_an_earlier_snapshot(tmp_path: Path) -> None:
    import errno

    import pytest

    with Machine(memory=4 << 20) as machine, pytest.raises(OSError) as info:
        snapshot(machine, tmp_path / "d", diff=True)
    assert info.value.errno == errno.EINVAL and not (tmp_path / "d").exists()


def test_diff_of_a_restored_machine_chains(tmp_path: Path) -> None:
    """Two diffs in a row over one full snapshot: the restore of the last maps three layers
    (full, diff, diff) and continues the sequence."""
    port = CountPort()
    with Machine(memory=16 << 20) as machine:
        port.attach(machine)
        thread = start_and_pause(machine, port, 100)
        snapshot(machine, tmp_path / "a")
        for name, after in (("b", 300), ("c", 600)):
            assert machine.resume()
            while len(port.seen) < after:
                time.sleep(0.001)
            assert machine.pause()
            snapshot(machine, tmp_path / name, diff=True)
        last = port.seen[-1]
        machine.stop()
        thread.join(30)
    clone = restore(tmp_path / "c", attach=(port2 := CountPort()).attach)
    with clone:
        clone.run(timeout=60)
    assert port2.seen == list(range(last + 1, LIMIT + 1))
