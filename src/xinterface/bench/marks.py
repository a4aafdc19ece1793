"""A guest's marks on the debug console (port 0xe9), timed as they arrive: a benchmark guest
writes one letter where its measured part starts ('S') and one where it ends ('E'), so a
figure leaves out the VMM's start-up and the guest's set-up, on xinterface (the machine's
console) and on QEMU (its ``isa-debugcon`` on a ``stdio`` chardev, read from a pipe) alike."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# QEMU's debug console on port 0xe9 as a stdio chardev: each byte the guest writes is written
# to QEMU's stdout as it comes, for run_marked() to time.
QEMU_MARKS_CONSOLE = ["-chardev", "stdio,id=marks",
                      "-device", "isa-debugcon,iobase=0xe9,chardev=marks"]


@dataclass
class Marks:
    """The guest's port 0xe9 output with the time each mark first appeared."""

    on_mark: Callable[[str], None] = lambda mark: None
    times: dict[str, float] = field(default_factory=dict)
    text: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes, /) -> int:
        now = time.perf_counter()
        for byte in data:
            mark = chr(byte)
            if mark not in self.times:
                self.times[mark] = now
                self.on_mark(mark)
        self.text += data
        return len(data)

    def flush(self) -> None:
        pass

    def span(self, start: str = "S", end: str = "E") -> float | None:
        """Seconds from mark ``start`` to mark ``end``, None unless both came."""
        if start in self.times and end in self.times:
            return self.times[end] - self.times[start]
        return None


def pump(fd: int, marks: Marks) -> threading.Thread:
    """Feed ``marks`` from ``fd`` (a QEMU's stdout) until end of file, on a thread of its own
    (QEMU writes each byte of a stdio chardev as the guest writes it)."""

    def run() -> None:
        while chunk := os.read(fd, 64):
            marks.write(chunk)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    return reader


def run_marked(command: list[str], marks: Marks, timeout: float) -> tuple[int, str]:
    """Run ``command`` (a QEMU with :data:`QEMU_MARKS_CONSOLE`), feeding ``marks`` from its
    stdout; its exit status (negative if killed after ``timeout``) and its stderr."""
    vm = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert vm.stdout is not None and vm.stderr is not None
    reader = pump(vm.stdout.fileno(), marks)   # the only reader of stdout
    try:
        vm.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        vm.kill()
        vm.wait()
    reader.join(5)
    stderr = vm.stderr.read()   # a few warnings at most: it cannot fill the pipe
    vm.stdout.close()
    vm.stderr.close()
    return vm.returncode, stderr.decode(errors="replace")
