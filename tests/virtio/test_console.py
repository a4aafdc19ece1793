"""virtio-console with one port, through the calls its transport makes and the Python
driver writing real guest RAM."""

from __future__ import annotations

import io
import struct

import xinterface as xi
from tests.conftest import needs_kvm
from xinterface.virtio import Status
from xinterface.virtio.console import EMERG_WRITE, VIRTIO_CONSOLE_F_EMERG_WRITE, VirtioConsole
from xinterface.virtio.driver import QueueDriver, bring_up

pytestmark = needs_kvm
RX_RING, TX_RING, BUF = 0x10000, 0x14000, 0x20000


def test_output_input_and_emergency_write() -> None:
    out = io.BytesIO()
    console = VirtioConsole(out, input_limit=16)
    with xi.Machine(memory=1 << 20) as m:
        intf = xi.bind(m)
        rx, tx = QueueDriver(intf, RX_RING, 8), QueueDriver(intf, TX_RING, 8)
        console.feed(b"early ")                   # before any driver: it waits
        assert bring_up(console, intf, [rx, tx]) & Status.DRIVER_OK
        assert console.negotiated(VIRTIO_CONSOLE_F_EMERG_WRITE)
        assert struct.unpack("<HHI", console.read_config(0, 8))[2] == 1   # max_nr_ports

        intf.copy_to(BUF, b"hello from hvc0\n")
        head = tx.post([(BUF, 16, False)])
        console.notify(1)
        assert out.getvalue() == b"hello from hvc0\n"
        assert tx.used() == [(head, 0)]

        first = rx.post([(BUF + 0x100, 4, True)])
        console.notify(0)                           # the waiting input fills what it offers
        console.feed(b"typed")
        assert rx.used() == [(first, 4)]
        assert intf.copy_from(BUF + 0x100, 4) == b"earl"
        second = rx.post([(BUF + 0x200, 64, True)])
        console.notify(0)
        assert rx.used() == [(second, 7)]
        assert intf.copy_from(BUF + 0x200, 7) == b"y typed"

        console.feed(b"x" * 40)                     # beyond input_limit: dropped, counted
        assert console.stats["input_dropped"] == 40 - 16

        console.write_config(EMERG_WRITE, b"!\0\0\0")
        assert out.getvalue().endswith(b"!")
        console.disconnect()
