"""``--snapshot-on``/``--snapshot``/``--continue`` and ``xinterface restore`` as a user runs
them: real processes, a guest that prints 1 to 99 on the debug console (and exits with
status 5), snapshotted at a line and continued by another process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.harness import error_lines, xinterface
from tests.conftest import GUESTS, needs_kvm

pytestmark = needs_kvm

COUNT = GUESTS / "count_print.S"
LIMIT = 99
DONE = 5   # the guest's debug-exit status


def lines(first: int, last: int) -> str:
    return "".join(f"{n}\n" for n in range(first, last + 1))


# The fast path takes plain options; a --serial FILE sends run to click (launch.py).
PATHS = {"fast": [], "click": ["--serial", os.devnull]}


@pytest.mark.parametrize("path", PATHS)
def test_run_snapshot_on_then_restore_prints_the_exact_continuation(
        tmp_path: Path, path: str) -> None:
    snap = tmp_path / "snap"
    done = xinterface("run", COUNT, *PATHS[path], "--snapshot-on", "50\n", "--snapshot", snap)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == lines(1, 50)   # nothing past the line: paused right there
    assert (snap / "manifest.json").is_file()
    again = xinterface("restore", snap)
    assert (again.returncode, again.stderr) == (DONE, "")
    assert again.stdout == lines(51, LIMIT)
    # Restores are clones: the snapshot's files do not change, the next one is the same.
    assert xinterface("restore", snap).stdout == lines(51, LIMIT)


def test_mid_line_and_continue(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    done = xinterface("run", COUNT, "--snapshot-on", "7", "--snapshot", snap, "--continue")
    assert (done.returncode, done.stderr) == (DONE, "")
    assert done.stdout == lines(1, LIMIT)   # the run went on after the snapshot
    # TEXT matched after "7": the restore starts with the rest of that line.
    again = xinterface("restore", snap, "--until", "20\n")
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == "\n" + lines(8, 20)


def test_restore_sends_com1_where_asked(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    assert xinterface("run", COUNT, "--serial", "-", "--snapshot-on", "3\n",
                      "--snapshot", snap).returncode == 0
    out = tmp_path / "com1.txt"
    again = xinterface("restore", snap, "--serial", out)
    assert again.returncode == DONE and again.stdout == lines(4, LIMIT)
    assert out.read_bytes() == b""   # the guest writes nothing to COM1, but it is there
    # A snapshot without COM1 refuses --serial, before it runs.
    bare = tmp_path / "bare"
    assert xinterface("run", COUNT, "--snapshot-on", "3\n", "--snapshot", bare).returncode == 0
    refused = xinterface("restore", bare, "--serial", "-")
    assert refused.returncode == 2 and refused.stdout == ""
    assert error_lines(refused.stderr) == [
        f"xinterface: --serial: the snapshot {bare} has no serial port (COM1)"]


def _edit_manifest(snap: Path, change: str) -> None:
    manifest = snap / "manifest.json"
    if change == "truncated":
        text = manifest.read_text()
        manifest.write_text(text[:len(text) // 2])
        return
    outer = json.loads(manifest.read_text())
    if change == "version":
        outer["body"]["version"] = 99   # with its digest made again: only the version is off
        from xinterface.snapshot.format import _digest
        outer["sha256"] = _digest(outer["body"])
    else:
        outer["body"]["machine"]["vcpus"] = 2   # the body changed, its digest not
    manifest.write_text(json.dumps(outer))


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    snap = tmp_path_factory.mktemp("taken") / "snap"
    done = xinterface("run", COUNT, "--snapshot-on", "10\n", "--snapshot", snap)
    assert done.returncode == 0, done.stderr
    return snap


@pytest.mark.parametrize(("change", "needle"), [
    ("version", "format version 99, this xinterface reads version 1"),
    ("truncated", "manifest.json is not JSON (truncated?)"),
    ("edited", "manifest.json was edited"),
    ("memory-truncated", "(truncated?)"),
    ("memory-missing", "No such file or directory"),
    ("memory-touched", "changed after the snapshot"),
])
def test_a_bad_snapshot_is_one_line_and_nothing_runs(taken: Path, tmp_path: Path, change: str,
                                                     needle: str) -> None:
    snap = tmp_path / "copy"
    shutil.copytree(taken, snap)   # copy2: the memory files keep their modification time
    memory = snap / "mem-0.bin"
    if change == "memory-truncated":
        os.truncate(memory, 4096)
    elif change == "memory-missing":
        memory.unlink()
    elif change == "memory-touched":
        os.utime(memory)
    else:
        _edit_manifest(snap, change)
    done = xinterface("restore", snap)
    assert done.returncode == 1
    assert done.stdout == ""   # not one count: nothing ran
    assert len(error_lines(done.stderr)) == 1 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--snapshot-on", "5"], "--snapshot-on TEXT and --snapshot DIR go together"),
    (["--snapshot", "SNAP"], "--snapshot-on TEXT and --snapshot DIR go together"),
    (["--continue"], "--continue needs --snapshot-on TEXT and --snapshot DIR"),
    (["--snapshot-on", "", "--snapshot", "SNAP"], "--snapshot-on needs some text"),
    (["--snapshot-on", "5", "--snapshot", "TAKEN"], "holds a snapshot already"),
])
@pytest.mark.parametrize("command", ["run", "boot"])
def test_snapshot_options_refused_before_anything_runs(
        taken: Path, tmp_path: Path, args: list[str], needle: str, command: str) -> None:
    names = {"SNAP": str(tmp_path / "snap"), "TAKEN": str(taken)}
    args = [names.get(a, a) for a in args]
    head = ["run", str(COUNT)] if command == "run" else ["boot", "--bios", str(COUNT)]
    done = xinterface(*head, *args)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(error_lines(done.stderr)) == 1 and needle in done.stderr, done.stderr
    assert not (tmp_path / "snap" / "manifest.json").exists()


def test_text_that_never_appears(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    done = xinterface("run", COUNT, "--snapshot-on", "1000\n", "--snapshot", snap)
    assert done.returncode == 1 and done.stdout == lines(1, LIMIT)
    assert error_lines(done.stderr) == [
        "xinterface: the guest ended (exit) before '1000\\n' appeared: no snapshot was written"]
    assert not (snap / "manifest.json").exists()


SEABIOS = Path("/usr/share/seabios/bios-microvm.bin")


@pytest.mark.skipif(not SEABIOS.exists(), reason="Debian's seabios is not installed")
def test_boot_seabios_snapshotted_at_a_debug_console_line_and_restored(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    done = xinterface("boot", "--bios", SEABIOS, "--debugcon", "-", "--serial", "none",
                      "--snapshot-on", "Found", "--snapshot", snap)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("SeaBIOS (version") and done.stdout.endswith("Found")
    again = xinterface("restore", snap, "--debugcon", "-", "--until", "Booting from")
    assert again.returncode == 0, again.stderr
    # The rest of the line it was saved in, then on, reading fw_cfg: nothing said twice.
    assert again.stdout.startswith(" QEMU fw_cfg\n"), again.stdout[:200]
    assert "SeaBIOS (version" in again.stdout and again.stdout.count("QEMU fw_cfg") == 2
    assert again.stdout.rstrip().endswith("Booting from")
    # --debugcon none at restore: the same guest, its log dropped.
    quiet = xinterface("restore", snap, "--until", "Booting from", "--timeout", "30")
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_a_snapshot_that_cannot_be_written_ends_the_run_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = xinterface("run", COUNT, "--snapshot-on", "5\n", "--snapshot", blocker / "snap")
    assert done.returncode == 1 and done.stdout == lines(1, 5)
    assert error_lines(done.stderr) == [f"xinterface: snapshot {blocker / 'snap'}: Not a "
                                        "directory (ENOTDIR)"], done.stderr
