"""The platform devices' save()/load(): their state comes back in a restored machine, and a
saved state out of range is refused naming the field."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine, bind
from xinterface.devices.cmos import Cmos
from xinterface.devices.reset import ResetControl
from xinterface.devices.uart import COM1_BASE, Uart16550
from xinterface.snapshot import restore, snapshot

pytestmark = needs_kvm


def _attach(machine: Machine) -> tuple[Uart16550, Cmos]:
    intf = bind(machine)
    uart, cmos = Uart16550(io.BytesIO()), Cmos()
    for device in (uart, cmos, ResetControl()):
        device.attach(intf)
    return uart, cmos


def test_uart_and_cmos_state_survive_a_restore(tmp_path: Path) -> None:
    with Machine(memory=4 << 20) as machine:
        uart, cmos = _attach(machine)
        bus = machine.pio_bus
        for port, value in ((COM1_BASE + 3, 0x83), (COM1_BASE, 0x01), (COM1_BASE + 3, 0x03),
                            (COM1_BASE + 1, 0x05), (COM1_BASE + 4, 0x0B),
                            (COM1_BASE + 7, 0x5A), (0x70, 0x40), (0x71, 0x99)):
            assert bus.write(port, bytes([value]))
        uart.feed(b"typed")
        saved = (uart.save(), cmos.save())
        snapshot(machine, tmp_path / "s")
    got: list[tuple[Uart16550, Cmos]] = []
    clone = restore(tmp_path / "s", attach=lambda m: got.append(_attach(m)))
    with clone:
        uart2, cmos2 = got[0]
        assert (uart2.save(), cmos2.save()) == saved
        assert uart2.dll == 0x01 and uart2.ier == 0x05 and cmos2.ram[0x40] == 0x99
        # The guest reads what it had typed at it, through the bus.
        assert clone.pio_bus.read(COM1_BASE, 1) == b"t"


@pytest.mark.parametrize(("field", "value"), [("ier", 0x10), ("dll", 256), ("mcr", -1),
                                              ("rx", "zz"), ("thre_pending", 1)])
def test_uart_refuses_a_bad_saved_state(field: str, value: object) -> None:
    state = Uart16550().save()
    state[field] = value
    with pytest.raises(OSError) as info:
        Uart16550().load(state)
    assert info.value.errno == errno.EINVAL and field in str(info.value)


def test_cmos_refuses_a_bad_saved_state() -> None:
    for field, value in (("index", 0x80), ("ram", "00")):
        state = Cmos().save()
        state[field] = value
        with pytest.raises(OSError) as info:
            Cmos().load(state)
        assert info.value.errno == errno.EINVAL and field in str(info.value)
