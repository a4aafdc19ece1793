"""``--serial stdio``: the terminal connected to the guest's 16550A both ways, in raw mode,
QEMU's escape keys, and the terminal given back as it was on every way out. Typed into a real
guest (tests/guests/serial_echo.S) on a pseudo-terminal."""

from __future__ import annotations

import signal
import termios

import pytest

from tests.cli.harness import Terminal
from tests.conftest import GUESTS, needs_kvm

pytestmark = needs_kvm

ECHO_GUEST = GUESTS / "serial_echo.S"
SEABIOS = "/usr/share/seabios/bios-microvm.bin"
LFLAG = 3


def raw(attrs: list[object]) -> bool:
    lflag = attrs[LFLAG]
    assert isinstance(lflag, int)
    return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)


@pytest.mark.parametrize(("ending", "status", "last"), [
    (b".", 0, b"ABC.\r\n"),                               # the guest halts
    (b"!", 1, b"triple fault"),                           # the guest fails
    (b"\x01x", 0, b"ABC"),                                # Ctrl-A x
    (None, 128 + signal.SIGTERM, b"terminated by SIGTERM"),  # kill
])
def test_typing_into_the_guest_then_leaving(ending: bytes | None, status: int,
                                            last: bytes) -> None:
    with Terminal("run", ECHO_GUEST, "--serial", "stdio") as term:
        assert not raw(term.before)
        term.expect(b"ready\r")
        assert raw(term.attributes())
        term.press(b"abc")
        term.expect(b"ABC")                    # the guest's echo, upper-cased
        assert b"abc" not in term.screen       # and no local echo: raw mode
        if ending is None:
            term.proc.send_signal(signal.SIGTERM)
        else:
            term.press(ending)
        assert term.wait() == status, term.screen
        assert last in term.screen
        assert term.attributes() == term.before


def test_escape_keys_help_and_a_literal_ctrl_a() -> None:
    with Terminal("run", ECHO_GUEST, "--serial", "stdio") as term:
        term.expect(b"ready\r")
        term.press(b"\x01h")
        term.expect(b"C-a x    quit xinterface")
        term.press(b"\x01\x01q")                # Ctrl-A Ctrl-A: one Ctrl-A reaches the guest
        term.expect(b"\x01Q")
        term.press(b"\x03.")                    # Ctrl-C is the guest's too, in raw mode
        assert term.wait() == 0, term.screen
        assert b"\x03." in term.screen
        assert term.attributes() == term.before


def test_boot_console_quits_with_ctrl_a_x() -> None:
    # The same console on the boot command's COM1 (in-kernel irqchip, IRQ 4 through an irqfd).
    with Terminal("boot", "--bios", SEABIOS, "--memory", "32M", "--serial", "stdio",
                  "--debugcon", "-") as term:
        term.expect(b"SeaBIOS (version")
        assert raw(term.attributes())
        term.press(b"\x01x")
        assert term.wait() == 0, term.screen
        assert term.attributes() == term.before
