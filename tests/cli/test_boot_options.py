"""``xinterface boot``'s options: the ``--disk``/``--net`` grammar the front end parses into
the machine description, and the description's rules reported as usage errors that name the
option, with click's status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.harness import error_lines, xinterface
from tests.conftest import needs_kvm
from xinterface.frontend.devices import parse_disk
from xinterface.spec import Disk

BIOS = "/usr/share/seabios/bios-microvm.bin"


@pytest.mark.parametrize(("text", "parsed"), [
    ("a.img", Disk("a.img")),
    ("a.img,readonly", Disk("a.img", readonly=True)),
    ("a.img,ro", Disk("a.img", readonly=True)),
    ("a.img, ro ,", Disk("a.img", readonly=True)),
    ("b.img,", Disk("b.img")),
])
def test_disk_option(text: str, parsed: Disk) -> None:
    assert parse_disk(text) == parsed


@pytest.mark.parametrize("text", ["", ",readonly", "a.img,rw", "a.img,readonly,cache=none"])
def test_bad_disk_option(text: str) -> None:
    with pytest.raises(ValueError, match="expected FILE or FILE,readonly"):
        parse_disk(text)


@pytest.mark.parametrize(("args", "line"), [
    ([], "Error: give exactly one of --bios FILE (firmware) and --kernel FILE (Linux, booted "
         "directly)"),
    (["--bios", BIOS, "--kernel", BIOS], "Error: give exactly one of --bios FILE (firmware) "
                                         "and --kernel FILE (Linux, booted directly)"),
    (["--bios", BIOS, "--initrd", BIOS], "Error: Invalid value for '--initrd': --initrd needs "
                                         "--kernel"),
    (["--bios", BIOS, "--memory", "512K"], "Error: Invalid value for '--memory': 512 KiB is "
                                           "too little for the firmware: SeaBIOS needs 640K "
                                           "or more"),
    (["--bios", BIOS, "--disk", "x,bogus"], "Error: Invalid value: --disk 'x,bogus': expected "
                                            "FILE or FILE,readonly"),
    (["--bios", BIOS, "--net", "tap=a,mac=01:00:00:00:00:00"],
     "Error: Invalid value: --net 'tap=a,mac=01:00:00:00:00:00': MAC '01:00:00:00:00:00' is a "
     "multicast address (EINVAL)"),
    (["--bios", BIOS, "--net", "tap0"], "Error: Invalid value: --net 'tap0': expected "
                                        "tap=NAME[,mac=MAC][,rom=FILE]"),
    (["--bios", BIOS, "--board", "q35"], "Error: Invalid value for '--board': 'q35' is not one "
                                         "of 'microvm', 'pc'."),
])
def test_usage_errors_name_the_option(args: list[str], line: str) -> None:
    done = xinterface("boot", *args)
    assert (done.returncode, error_lines(done.stderr)) == (2, [line]), done.stderr


@needs_kvm
def test_a_missing_disk_fails_the_boot(tmp_path: Path) -> None:
    done = xinterface("boot", "--bios", BIOS, "--disk", tmp_path / "none.img", "--timeout", "1")
    assert (done.returncode, error_lines(done.stderr)) == (
        1, [f"xinterface: disk image {tmp_path / 'none.img'}: No such file or directory "
            "(ENOENT)"])
