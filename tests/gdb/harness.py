"""Debian's GDB in batch mode against ``xinterface run|boot --gdb unix:PATH --gdb-wait``.

UNIX sockets (in the test's directory) keep parallel runs from fighting over TCP ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

GUESTS = Path(__file__).parent.parent / "guests"
# Generous: a deadline only turns a hang into a failure, it measures nothing.
DEADLINE = 120.0

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="Debian's gdb is missing")


def link_elf(name: str, out: Path) -> Path:
    """tests/guests/NAME.S assembled with line numbers and linked the ordinary way."""
    obj = out / f"{name}.o"
    elf = out / f"{name}.elf"
    subprocess.run(["as", "--32", "-g", "-o", obj, GUESTS / f"{name}.S"], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", elf, obj], check=True)
    return elf


class Session(NamedTuple):
    gdb: str          # GDB's output
    status: int       # xinterface's exit status
    output: str       # xinterface's stdout


def debug(command: list[str | Path], script: str, sock: Path,
          program: Path | None = None, deadline: float = DEADLINE) -> Session:
    """Start ``xinterface COMMAND --gdb unix:SOCK --gdb-wait``, run GDB's ``script`` (after
    ``target remote SOCK``) against it, wait for both."""
    proc = subprocess.Popen([sys.executable, "-m", "xinterface", *map(str, command),
                             "--gdb", f"unix:{sock}", "--gdb-wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    try:
        until = time.monotonic() + deadline
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > until:
                raise AssertionError(f"no GDB socket: {proc.communicate()[0]}")
            time.sleep(0.05)
        commands = sock.parent / f"{sock.name}.gdb"
        commands.write_text(f"set confirm off\nset pagination off\ntarget remote {sock}\n"
                            + script)
        gdb = subprocess.run(["gdb", "-batch", "-nx", "-x", commands,
                              *([program] if program else [])],
                             capture_output=True, text=True, timeout=deadline,
                             errors="replace", env={**os.environ, "TERM": "dumb"})
        output, _ = proc.communicate(timeout=deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Session(gdb.stdout + gdb.stderr, proc.returncode, output)
