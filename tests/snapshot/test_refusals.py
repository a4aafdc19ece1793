"""What a snapshot refuses to write, and what a restore refuses to run: one line each,
nothing half done."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine, XIOEventFlags, bind
from xinterface.snapshot import SnapshotError, restore, snapshot

from .counting import CountPort, image

pytestmark = needs_kvm


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the counting guest loaded but not yet run (no boot needed)."""
    directory = tmp_path_factory.mktemp("refuse") / "good"
    with Machine(memory=4 << 20) as machine:
        CountPort().attach(machine)
        machine.load_flat(image(), gpa=0x1000, mode="protected")
        snapshot(machine, directory)
    return directory


def copy(good: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(good, out, copy_function=shutil.copy2)  # keeps the mtimes (cp -a)
    return out


def test_a_device_without_save_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    with Machine(memory=4 << 20) as machine:
        bind(machine).iorange(0x600, 1, XIOEventFlags.PIO, write=lambda o, d: None,
                              name="users-port")
        with pytest.raises(SnapshotError) as info:
            snapshot(machine, tmp_path / "never")
    assert info.value.errno == errno.EOPNOTSUPP and "users-port" in str(info.value)
    assert not (tmp_path / "never").exists()


def test_a_running_machine_is_refused(tmp_path: Path) -> None:
    import threading

    with Machine(memory=4 << 20) as machine:
        port = CountPort()
        port.attach(machine)
        machine.load_flat(image(), gpa=0x1000, mode="protected")
        thread = threading.Thread(target=machine.run, kwargs={"timeout": 30})
        thread.start()
        try:
            while not port.seen:
                pass
            with pytest.raises(SnapshotError) as info:
                snapshot(machine, tmp_path / "busy")
            assert info.value.errno == errno.EBUSY
        finally:
            machine.stop()
            thread.join()


def test_restore_of_the_good_one_works(good: Path) -> None:
    machine = restore(good, attach=CountPort().attach)
    machine.close()


def _edit(path: Path, change: object) -> None:
    outer = json.loads((path / "manifest.json").read_text())
    assert callable(change)
    change(outer)
    (path / "manifest.json").write_text(json.dumps(outer))


@pytest.mark.parametrize(("what", "code", "words"), [
    ("version", errno.EPROTO, "format version"),
    ("edited", errno.EBADMSG, "edited"),
    ("truncated manifest", errno.EINVAL, "not JSON"),
    ("truncated memory", errno.EINVAL, "truncated"),
    ("missing memory", errno.ENOENT, "mem-0.bin"),
    ("changed memory", errno.EINVAL, "changed after the snapshot"),
    ("missing device", errno.EINVAL, "devices differ"),
])
def test_a_damaged_snapshot_is_one_line(good: Path, tmp_path: Path, what: str, code: int,
                                        words: str) -> None:
    snap = copy(good, tmp_path)
    attach: Callable[[Machine], object] = CountPort().attach
    manifest, memory = snap / "manifest.json", snap / "mem-0.bin"
    if what == "version":
        _edit(snap, lambda o: o["body"].update(version=99))
    elif what == "edited":
        _edit(snap, lambda o: o["body"]["machine"].update(vcpus=2))
    elif what == "truncated manifest":
        manifest.write_bytes(manifest.read_bytes()[:100])
    elif what == "truncated memory":
        os.truncate(memory, 4096)
    elif what == "missing memory":
        memory.unlink()
    elif what == "changed memory":
        with open(memory, "r+b") as file:
            file.write(b"x")
    elif what == "missing device":
        attach = lambda machine: None  # noqa: E731 - the CountPort is not attached again
    with pytest.raises(SnapshotError) as info:
        restore(snap, attach=attach)
    assert info.value.errno == code
    assert words in str(info.value) and "\n" not in str(info.value)


def test_snapshot_into_an_existing_snapshot_is_refused(good: Path) -> None:
    with Machine(memory=4 << 20) as machine, pytest.raises(SnapshotError) as info:
        snapshot(machine, good)
    assert info.value.errno == errno.EEXIST
