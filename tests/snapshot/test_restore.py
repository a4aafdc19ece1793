"""A counting guest snapshotted mid-run continues its exact sequence after a restore: in a
new process, in this one, and as eight clones side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine
from xinterface.snapshot import restore, snapshot

from .counting import COUNTER, LIMIT, CountPort, continue_from, start_and_pause

ROOT = Path(__file__).parent.parent.parent
pytestmark = needs_kvm


@pytest.fixture(scope="module", params=[False, True], ids=["no-irqchip", "irqchip"])
def saved(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A snapshot of the guest paused after 300 counts, and the last count before it."""
    directory = str(tmp_path_factory.mktemp("snap") / "count")
    port = CountPort()
    with Machine(memory=16 << 20, irqchip=request.param) as machine:
        port.attach(machine)
        thread = start_and_pause(machine, port, 300)
        last = port.seen[-1]
        snapshot(machine, directory)
        # The original goes on from the pause too, and finishes its own sequence.
        assert machine.resume()
        thread.join(60)
        assert port.seen == list(range(1, LIMIT + 1))
    return directory, last


def test_new_process_continues_the_sequence(saved: tuple[str, int]) -> None:
    directory, last = saved
    ran = subprocess.run([sys.executable, "-m", "tests.snapshot.counting", directory],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["seen"] == list(range(last + 1, LIMIT + 1))


def test_restore_in_process_continues(saved: tuple[str, int]) -> None:
    directory, last = saved
    _, seen = continue_from(directory)
    assert seen == list(range(last + 1, LIMIT + 1))


def test_eight_clones_side_by_side(saved: tuple[str, int]) -> None:
    """Eight restores of one snapshot, all running at once, each its own sequence; one
    clone's writes to its memory reach neither the file nor its siblings."""
    directory, last = saved
    ports = [CountPort() for _ in range(8)]
    machines = [restore(directory, attach=p.attach) for p in ports]
    try:
        memory = machines[0].memory
        assert memory is not None
        memory.write(COUNTER + 0x100, b"clone 0 only")
        threads = [threading.Thread(target=m.run, kwargs={"timeout": 60}) for m in machines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        for port in ports:
            assert port.seen == list(range(last + 1, LIMIT + 1))
        for m in machines[1:]:
            assert m.memory is not None
            assert m.memory.read(COUNTER + 0x100, 12) == bytes(12)
        with open(os.path.join(directory, "mem-0.bin"), "rb") as file:
            file.seek(COUNTER + 0x100)
            assert file.read(12) == bytes(12)
            file.seek(COUNTER)
            # The kick may have come between the increment and its write.
            assert int.from_bytes(file.read(4), "little") in (last, last + 1)
    finally:
        for m in machines:
            m.close()


def test_clones_in_several_processes(saved: tuple[str, int]) -> None:
    directory, last = saved
    procs = [subprocess.Popen([sys.executable, "-m", "tests.snapshot.counting", directory],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ,
                                             "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
             for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert json.loads(out)["seen"] == list(range(last + 1, LIMIT + 1))
