"""The builder (``xinterface.build``): a machine description, recorded as JSON and read
back, built on real KVM with Debian's SeaBIOS; and the bare machine ``xinterface run`` gets."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import pytest

from tests.conftest import Assemble, needs_kvm
from xinterface.build import build, build_machine
from xinterface.devices import Until
from xinterface.errors import GuestIOError, XInterfaceError
from xinterface.spec import Boot, Consoles, MachineSpec

pytestmark = needs_kvm
BIOS = {"microvm": Path("/usr/share/seabios/bios-microvm.bin"),
        "pc": Path("/usr/share/seabios/bios.bin")}


@pytest.mark.parametrize("board", ["microvm", "pc"])
def test_a_recorded_description_boots_seabios(board: str) -> None:
    recorded = json.dumps(MachineSpec(memory=32 << 20, board=board, rng=True,
                                      boot=Boot(firmware=str(BIOS[board]))).to_json())
    spec = MachineSpec.from_json(json.loads(recorded))
    log = io.BytesIO()
    with build_machine(spec) as machine:
        watch = Until(log, b"enter handle_19", machine.stop)
        built = build(spec, machine, debugcon=watch, serial=io.BytesIO())
        result = machine.run(timeout=120)
    text = log.getvalue().decode(errors="replace")
    assert watch.matched and result.reason == "stopped", text[-2000:]
    assert built.platform is not None and built.kernel is None
    assert (built.platform.pci is not None) == (board == "pc")
    assert len(built.platform.virtio) == 1           # the rng
    assert built.feed == built.platform.uart.feed    # no virtio-console: COM1 takes the keys
    assert f"len 0x{32 << 20:016x} [RAM]" in text


def test_the_virtio_console_takes_the_keys() -> None:
    spec = MachineSpec(memory=8 << 20, boot=Boot(firmware=str(BIOS["microvm"])),
                       consoles=Consoles(virtio_console=True))
    with build_machine(spec) as machine:
        built = build(spec, machine, serial=io.BytesIO())
        assert built.platform is not None and built.platform.console is not None
        assert built.feed == built.platform.console.feed


def test_no_board_gives_com1_when_asked(guest: Assemble) -> None:
    serial, console = io.BytesIO(), io.BytesIO()
    spec = MachineSpec(memory=1 << 20, board=None, irqchip=False)
    with build_machine(spec, console=console) as machine:
        machine.load_flat(guest("uart_echo", COUNT=1), mode="protected")
        built = build(spec, machine, serial=serial)
        assert built.platform is None and built.feed is not None
        built.feed(b"a")    # waits in the receive buffer until the guest reads it
        result = machine.run(timeout=30)
    assert result.reason == "hlt"
    assert (serial.getvalue(), console.getvalue()) == (b"hi\n", b"Rb")


def test_no_board_and_no_uart_leaves_com1_unclaimed(guest: Assemble) -> None:
    spec = MachineSpec(memory=1 << 20, board=None, irqchip=False, strict=True,
                       consoles=Consoles(uart=False))
    with build_machine(spec, console=io.BytesIO()) as machine:
        machine.load_flat(guest("uart_echo", COUNT=1), mode="protected")
        assert build(spec, machine) == (None, None, None)
        with pytest.raises(GuestIOError, match="0x3fb"):   # strict: nobody claims COM1
            machine.run(timeout=30)


def test_an_invalid_description_builds_nothing() -> None:
    spec = MachineSpec(memory=32 << 20, boot=Boot(firmware=str(BIOS["microvm"])))
    with pytest.raises(XInterfaceError) as info:
        build_machine(spec._replace(vcpus=0))
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "vcpus")
    with build_machine(spec) as machine:
        with pytest.raises(XInterfaceError) as info:
            build(spec._replace(board="q35"), machine)
        assert info.value.argument == "board"
        # Checked before anything was attached: the board's ports are still free.
        assert build(spec, machine, serial=io.BytesIO()).platform is not None


def test_every_board_the_description_names_is_built() -> None:
    from xinterface.boards import BOARDS
    from xinterface.spec import BOARD_NAMES

    assert tuple(BOARDS) == BOARD_NAMES
