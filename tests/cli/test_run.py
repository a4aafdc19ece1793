"""``xinterface run`` as a user runs it: a real process, real guests, exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.harness import error_lines, xinterface
from tests.conftest import EXAMPLES, GUESTS, needs_kvm

pytestmark = needs_kvm


@pytest.mark.parametrize(("mode", "status"), [("real", 1), ("protected", 0), ("long", 0)])
def test_examples_run(mode: str, status: int) -> None:
    done = xinterface("run", EXAMPLES / f"hello-{mode}.S", "--mode", mode)
    assert done.stdout == f"Hello from {mode} mode\n"
    assert done.returncode == status, done.stderr
    assert done.stderr == ""


def test_flat_binary_and_trace(tmp_path: Path) -> None:
    from xinterface.loader import assemble

    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(GUESTS / "io_mix.S", gpa=0x2000))
    done = xinterface("run", image, "--gpa", "0x2000", "--mode", "protected", "--trace")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "pio  read  0x00e9 size 1 data e9 claimed"
    assert "pio  read  0x03ff size 4 data - unhandled" in lines
    assert "mmio write 0xd0000000 size 4 data 78563412 unhandled" in lines


@pytest.mark.parametrize(
    ("args", "needle", "status"),
    [
        (["run", "EXAMPLE", "--memory", "5000B"], "multiple of 4 KiB", 1),
        (["run", "EXAMPLE", "--memory", "lots"], "is not a size", 2),
        (["run", "EXAMPLE", "--vcpus", "0"], "Invalid value for '--vcpus'", 2),
        (["run", "EXAMPLE", "--mode", "v86"], "Invalid value for '--mode'", 2),
        (["run", "TRIPLE", "--mode", "protected"], "triple fault", 1),
        (["run", "SPIN", "--mode", "protected", "--timeout", "0.3"],
         "still running after 0.3 s", 124),
    ],
)
def test_bad_input_gives_one_clear_line(args: list[str], needle: str, status: int) -> None:
    names = {"EXAMPLE": EXAMPLES / "hello-real.S", "TRIPLE": GUESTS / "triple_fault.S",
             "SPIN": GUESTS / "spin.S"}
    done = xinterface(*(str(names.get(a, a)) for a in args))
    assert done.returncode == status, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    # One line of ours; click's usage errors add its usage and hint lines above the error.
    assert len(error_lines(done.stderr)) == 1, done.stderr
