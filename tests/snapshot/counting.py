"""The counting guest of the snapshot tests and its port, shared by the tests and by the
process that restores in ``python -m tests.snapshot.counting DIR``."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from xinterface import Machine, XInterface, XIOEventFlags, bind
from xinterface.loader import assemble

PORT = 0x500
LIMIT = 3000
COUNTER = 0x8000
SOURCE = Path(__file__).parent.parent / "guests" / "count_to.S"


def image() -> bytes:
    return assemble(SOURCE, gpa=0x1000, bits=32,
                    defines={"PORT": PORT, "LIMIT": LIMIT, "COUNTER": COUNTER})


class CountPort:
    """Port PORT: records every count the guest writes. Keeps no guest-visible state."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def attach(self, machine: Machine) -> XInterface:
        intf = bind(machine)
        intf.iorange(PORT, 4, XIOEventFlags.PIO, write=self.write, name="count")
        return intf

    def write(self, offset: int, data: bytes) -> None:
        self.seen.append(int.from_bytes(data, "little"))

    def save(self) -> dict[str, object]:
        return {}

    def load(self, state: dict[str, object]) -> None:
        pass


def start_and_pause(machine: Machine, port: CountPort, after: int) -> threading.Thread:
    """Run the guest on a thread until it wrote ``after`` counts, then pause it."""
    machine.load_flat(image(), gpa=0x1000, mode="protected")
    thread = threading.Thread(target=machine.run, kwargs={"timeout": 60}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while len(port.seen) < after and time.monotonic() < deadline:
        time.sleep(0.001)
    assert machine.pause()
    return thread


def continue_from(directory: str) -> tuple[str, list[int]]:
    """Restore ``directory``, run it to its end: the run's reason and the counts seen."""
    from xinterface.snapshot import restore

    port = CountPort()
    machine = restore(directory, attach=port.attach)
    with machine:
        result = machine.run(timeout=60)
    assert result.reason == "exit" and result.exit_code == 1, result
    return result.reason, port.seen


if __name__ == "__main__":
    reason, seen = continue_from(sys.argv[1])
    json.dump({"reason": reason, "seen": seen}, sys.stdout)
