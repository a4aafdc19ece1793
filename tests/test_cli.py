"""``xinterface run`` as a user runs it: a real process, real guests, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, GUESTS, needs_kvm

pytestmark = needs_kvm


def xinterface(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xinterface", *args], capture_output=True,
                          text=True, errors="replace", timeout=timeout, check=False)


@pytest.mark.parametrize(("mode", "status"), [("real", 1), ("protected", 0), ("long", 0)])
def test_examples_run(mode: str, status: int) -> None:
    done = xinterface("run", str(EXAMPLES / f"hello-{mode}.S"), "--mode", mode)
    assert done.stdout == f"Hello from {mode} mode\n"
    assert done.returncode == status, done.stderr
    assert done.stderr == ""


def test_flat_binary_and_trace(tmp_path: Path) -> None:
    from xinterface.loader import assemble

    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(GUESTS / "io_mix.S", gpa=0x2000))
    done = xinterface("run", str(image), "--gpa", "0x2000", "--mode", "protected", "--trace")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "pio  read  0x00e9 size 1 data e9 claimed"
    assert "pio  read  0x03ff size 4 data - unhandled" in lines
    assert "mmio write 0xd0000000 size 4 data 78563412 unhandled" in lines


def test_source_that_does_not_assemble(tmp_path: Path) -> None:
    source = tmp_path / "bad.S"
    source.write_text("        .code16\n        movq %rax, %cr9\n")
    done = xinterface("run", str(source))
    assert done.returncode == 1
    assert done.stderr.startswith("xinterface: as failed on ")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "/nonexistent.bin"], "No such file"),
        (["run", "EXAMPLE", "--memory", "5000"], "multiple of 4 KiB"),
        (["run", "EXAMPLE", "--memory", "lots"], "is not a size"),
        (["run", "EXAMPLE", "--vcpus", "0"], "vcpus 0"),
        (["run", "EXAMPLE", "--mode", "v86"], "Invalid value for '--mode'"),
        (["run", "TRIPLE", "--mode", "protected"], "triple fault"),
        (["run", "SPIN", "--mode", "protected", "--timeout", "0.3"], "still running after 0.3 s"),
    ],
)
def test_bad_input_gives_one_clear_line(args: list[str], needle: str) -> None:
    names = {"EXAMPLE": EXAMPLES / "hello-real.S", "TRIPLE": GUESTS / "triple_fault.S",
             "SPIN": GUESTS / "spin.S"}
    done = xinterface(*(str(names.get(a, a)) for a in args))
    assert done.returncode != 0
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    # One line of ours; click's usage errors add its usage and hint lines above the error.
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith(("xinterface:", "Error:"))]
    assert len(errors) == 1, done.stderr
