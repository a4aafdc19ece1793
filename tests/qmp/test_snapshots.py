"""QMP's snapshot commands (``x-snapshot-save``, ``-load``, ``-delete``) on ``xinterface run
--qmp``, driven by QEMU's client library (``qemu.qmp``): a guest that counts in %eax,
saved, let run on, loaded back in place (its count as saved), and the QMP errors of what
cannot be done."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.harness import xinterface
from tests.conftest import GUESTS
from tests.qmp.test_qmp import Vmm, execute, rax, session

qmp = pytest.importorskip("qemu.qmp")


@pytest.fixture(scope="module")
def vmm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vmm]:
    vmm = Vmm(tmp_path_factory.mktemp("qmp-snapshots"))
    yield vmm
    vmm.close()


async def _registers(client: Any) -> int:
    return rax(await client.execute("human-monitor-command",
                                    {"command-line": "info registers"}))


def test_save_then_load_in_place_brings_the_count_back(vmm: Vmm, tmp_path: Path) -> None:
    snap = str(tmp_path / "snap")

    async def steps(client: Any) -> Any:
        await client.execute("stop")
        saved = await _registers(client)
        assert await client.execute("x-snapshot-save", {"path": snap}) == {}
        await client.execute("cont")
        await asyncio.sleep(0.2)
        await client.execute("stop")
        later = await _registers(client)
        assert await client.execute("x-snapshot-load", {"path": snap}) == {}
        loaded = await _registers(client)
        status = await client.execute("query-status")
        await client.execute("cont")
        await asyncio.sleep(0.2)
        return saved, later, loaded, status, await _registers(client)

    ((saved, later, loaded, status, after),) = session(vmm.path, steps)
    assert later != saved        # it counted on after the save
    assert loaded == saved       # and the load put the saved count back
    assert status["status"] == "paused"   # a load of a paused guest leaves it paused
    assert after != loaded       # cont: it counts on from there
    assert (Path(snap) / "manifest.json").is_file()


def test_save_of_a_running_guest_pauses_it_around_the_write(vmm: Vmm, tmp_path: Path) -> None:
    snap = str(tmp_path / "snap")

    async def steps(client: Any) -> Any:
        with client.listener() as events:
            await client.execute("x-snapshot-save", {"path": snap})
            got = [(await events.get())["event"], (await events.get())["event"]]
        return got, await client.execute("query-status")

    ((events, status),) = session(vmm.path, steps)
    assert events == ["STOP", "RESUME"]
    assert status["status"] == "running"
    # A whole snapshot: another process restores it and the guest runs (it never ends).
    done = xinterface("restore", snap, "--timeout", "0.5")
    assert done.returncode == 124 and "still running after 0.5 s" in done.stderr


def test_delete_removes_the_snapshot_and_only_it(vmm: Vmm, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    session(vmm.path, execute("x-snapshot-save", {"path": str(snap)}))
    (snap / "notes.txt").write_text("mine")
    assert session(vmm.path, execute("x-snapshot-delete", {"path": str(snap)})) == [{}]
    assert sorted(p.name for p in snap.iterdir()) == ["notes.txt"]
    (snap / "notes.txt").unlink()
    session(vmm.path, execute("x-snapshot-save", {"path": str(snap)}))
    session(vmm.path, execute("x-snapshot-delete", {"path": str(snap)}))
    assert not snap.exists()     # nothing else in it: the directory goes too


def _error(vmm: Vmm, name: str, args: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(qmp.ExecuteError) as info:
        session(vmm.path, execute(name, args))
    error: dict[str, Any] = info.value.received["error"]
    return error


def test_what_cannot_be_done_is_a_qmp_error_and_the_guest_goes_on(vmm: Vmm,
                                                                    tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    session(vmm.path, execute("x-snapshot-save", {"path": str(snap)}))
    other = tmp_path / "other"   # a machine of another size
    made = xinterface("run", GUESTS / "count_print.S", "--memory", "32M", "--snapshot-on", "3",
                      "--snapshot", other)
    assert made.returncode == 0, made.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "keep.txt").write_text("x")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("x-snapshot-save", {"path": str(snap)}, "exists already"),
        ("x-snapshot-save", {"path": 5}, "Invalid parameter type for 'path'"),
        ("x-snapshot-save", {"path": str(tmp_path / "d"), "diff": "yes"}, "'diff'"),
        ("x-snapshot-save", {}, "Parameter 'path' is missing"),
        ("x-snapshot-load", {"path": str(tmp_path / "nowhere")}, "cannot read manifest.json"),
        ("x-snapshot-load", {"path": str(other)}, "is of another machine"),
        ("x-snapshot-delete", {"path": str(tmp_path / "plain")}, "cannot read manifest.json"),
    ]
    for name, args, needle in cases:
        error = _error(vmm, name, args)
        assert error["class"] == "GenericError" and needle in error["desc"], (name, error)
    assert (tmp_path / "plain" / "keep.txt").exists()
    status, commands = session(vmm.path, execute("query-status"), execute("query-commands"))
    assert status["status"] == "running"   # none of it stopped the guest
    names = {c["name"] for c in commands}
    assert {"x-snapshot-save", "x-snapshot-load", "x-snapshot-delete"} <= names
