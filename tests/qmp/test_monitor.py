"""The human monitor: ``Ctrl-A c`` on the serial console (QEMU's key) runs the same commands
as QMP's ``human-monitor-command``, on the same run control; ``info pci`` on a real board."""

from __future__ import annotations

import os

import pytest

from tests.cli.harness import Terminal
from tests.conftest import GUESTS, needs_kvm
from tests.qmp.test_qmp import execute, session
from xinterface.build import build, build_machine
from xinterface.qmp.controls import Controls
from xinterface.qmp.hmp import execute as hmp
from xinterface.spec import Boot, MachineSpec

pytestmark = needs_kvm
SEABIOS = "/usr/share/seabios/bios.bin"


def test_ctrl_a_c_opens_the_monitor_that_qmp_sees(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "qmp.sock")
    with Terminal("run", GUESTS / "serial_echo.S", "--serial", "stdio",
                  "--qmp", f"unix:{path}") as term:
        term.expect(b"ready\r")
        term.press(b"\x01c")
        term.expect(b"(qemu) ")
        term.press(b"info status\r")
        term.expect(b"VM status: running")
        term.press(b"abc")                          # typed at the monitor, not the guest
        term.press(b"\x7f\x7f\x7fstop\r")          # the line editor erases
        term.expect(b"\x08 \x08stop\r\r\n(qemu) ")  # OPOST adds a CR
        assert session(path, execute("query-status"))[0]["status"] == "paused"
        term.press(b"cont\r\x01c")                  # back to the guest
        term.press(b"xy")
        term.expect(b"XY")
        assert b"ABC" not in term.screen
        term.press(b"\x01c")
        term.press(b"quit\r")
        assert term.wait() == 0, term.screen
        assert term.attributes() == term.before


@pytest.mark.skipif(not os.path.exists(SEABIOS), reason="needs Debian's seabios")
def test_info_pci_lists_the_board_functions() -> None:
    spec = MachineSpec(memory=16 << 20, board="pc", rng=True, boot=Boot(firmware=SEABIOS))
    with build_machine(spec) as machine:
        built = build(spec, machine)
        text = hmp(Controls(machine, built.platform), "info pci")
        assert "PCI device 8086:1237" in text              # i440FX
        assert "PCI device 8086:7000" in text              # PIIX3
        assert "PCI device 1af4:" in text                   # the virtio-rng
        assert "not mapped" in text                         # nothing ran: BARs unassigned
        text = hmp(Controls(machine, None), "info pci")
        assert "no PCI bus" in text
        assert "unknown command" in hmp(Controls(machine), "frobnicate")
        # Each range under its device's name (the UART's, fw_cfg's), each event's delivery.
        ranges = hmp(Controls(machine), "info xioevents")
        assert "pio  0x000003f8 len 8 range uart16550a" in ranges
        assert "range write" not in ranges, ranges
        assert "pio  0x00000cf9 len 1 event sync" in ranges


@pytest.mark.skipif(not os.path.exists(SEABIOS), reason="needs Debian's seabios")
def test_boot_qmp_shows_the_bars_seabios_assigned(tmp_path: os.PathLike[str]) -> None:
    """``xinterface boot --qmp``: the BARs SeaBIOS programmed, seen through QMP."""
    import re
    import subprocess
    import sys
    import time

    from tests.qmp.test_qmp import DEADLINE
    from tests.qmp.test_qmp import hmp as qmp_hmp

    path = os.path.join(tmp_path, "qmp.sock")
    proc = subprocess.Popen([sys.executable, "-m", "xinterface", "boot", "--bios", SEABIOS,
                             "--board", "pc", "--rng", "--memory", "32M", "--serial", "none",
                             "--qmp", f"unix:{path}", "--timeout", "120"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + DEADLINE
        text = ""
        while not re.search(r"BAR4: 64 bit memory at 0x[0-9a-f]+", text):
            assert proc.poll() is None and time.monotonic() < end, text
            if os.path.exists(path):
                (text,) = session(path, qmp_hmp("info pci"))
            time.sleep(0.1)
        assert "PCI device 1af4:1005" in text and "IRQ 11, pin A" in text
        session(path, execute("quit"), ends=True)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
