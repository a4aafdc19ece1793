"""The interrupt lines devices are handed, each against a real guest on the in-kernel
irqchip: an edge through an irqfd and a level through KVM_IRQ_LINE on the 8259
(irq_count.S), and the three behind a virtio-mmio transport whose guest leaves the status
set once and expects the line back (level_irq.S)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm, wait_for
from xinterface.boards.microvm import virtio_mmio_slot
from xinterface.devices.interrupt import GsiLine, InterruptLine, IrqfdLine, irqfd_line
from xinterface.devices.level_irq import LevelIrqfds
from xinterface.virtio import VirtioMmio, VirtioRng

pytestmark = needs_kvm

PIO = xi.XIOEventFlags.PIO
IRQ, REPORT = 5, 0x550


def _count_interrupts(guest: Assemble, make: Callable[[xi.XInterface], InterruptLine],
                      send: Callable[[InterruptLine], None], count: int) -> list[int]:
    """Run irq_count.S; ``send(line)`` once the guest has reported each interrupt."""
    with xi.Machine(memory=1 << 20, irqchip=True) as m:
        m.load_flat(guest("irq_count", IRQ=IRQ, COUNT=count, REPORT=REPORT), mode="protected")
        intf = xi.bind(m)
        reports: list[int] = []
        intf.ioevent(REPORT, 4, PIO,
                     signal=lambda ev, payload: reports.append(int.from_bytes(payload,
                                                                              "little")))
        line = make(intf)

        def host() -> None:
            # The next interrupt only once the guest counted the last: the 8259 is reset by
            # the guest's set-up, and an edge before it would be lost, as on hardware.
            for i in range(count):
                if not wait_for(lambda: len(reports) > i):  # noqa: B023 - called at once
                    return
                send(line)

        worker = threading.Thread(target=host)
        worker.start()
        result = m.run(timeout=60)
        worker.join()
        assert (result.reason, result.exit_code) == ("exit", (count << 1) | 1)
        return reports


def test_irqfd_line_sends_an_edge_per_trigger_and_no_level(guest: Assemble) -> None:
    def send(line: InterruptLine) -> None:
        line.set_level(True)     # an edge-triggered line has no level: nothing happens
        line.trigger()
    reports = _count_interrupts(guest, lambda intf: IrqfdLine(intf, IRQ), send, 10)
    assert reports == list(range(11))


def test_gsi_line_follows_the_level_and_not_the_triggers(guest: Assemble) -> None:
    def send(line: InterruptLine) -> None:
        line.trigger()           # a level line takes nothing from a trigger
        line.set_level(True)     # the 8259 is edge-triggered: the rise is the interrupt
        line.set_level(False)
    reports = _count_interrupts(guest, lambda intf: GsiLine(intf, IRQ), send, 5)
    assert reports == list(range(6))


def test_irqfd_line_needs_an_irqchip() -> None:
    with xi.Machine(memory=1 << 20) as m:
        intf = xi.bind(m)
        assert irqfd_line(intf, IRQ) is None
        with pytest.raises(xi.XInterfaceError):
            IrqfdLine(intf, IRQ)


def _level_guest(guest: Assemble, make: Callable[[xi.XInterface, int], InterruptLine],
                 timeout: float) -> tuple[xi.RunResult, VirtioMmio]:
    base, gsi = virtio_mmio_slot(0)
    image = guest("level_irq", mode="protected", BASE=base, GSI=gsi)
    with xi.Machine(memory=2 << 20, irqchip=True, console=io.BytesIO()) as m:
        m.load_flat(image, gpa=0x1000, mode="protected")
        intf = xi.bind(m)
        mmio = VirtioMmio(VirtioRng(), base, irq=make(intf, gsi))
        mmio.attach(intf)
        result = m.run(timeout=timeout)
        mmio.detach()
    return result, mmio


def test_level_lines_come_back_while_the_status_is_set(guest: Assemble) -> None:
    # The guest's first handler leaves InterruptStatus set: a level line is still up at
    # its EOI and interrupts again; the second acknowledges it and the line goes down. A
    # third may come (KVM's IOAPIC may deliver once more around the EOI that follows the
    # drop; the guest then finds InterruptStatus 0, a spurious interrupt); never fewer
    # than two, which an edge would give.
    result, mmio = _level_guest(guest, GsiLine, 30)
    assert result.reason == "exit" and result.exit_code in ((2 << 1) | 1, (3 << 1) | 1)
    assert mmio.stats["interrupts"] == 1 and mmio.interrupt_status == 0


def test_resampling_irqfd_is_a_level_line(guest: Assemble) -> None:
    made: list[LevelIrqfds] = []

    def make(intf: xi.XInterface, gsi: int) -> InterruptLine:
        made.append(LevelIrqfds(intf))
        intf.on_release(made[0].close)
        return made[0].line(gsi)
    result, mmio = _level_guest(guest, make, 30)
    # A third interrupt may come (a re-raise decided at one EOI can land after the next,
    # tests/boards/test_firmware_on_boards.py says why); never fewer than two.
    assert result.reason == "exit" and result.exit_code in ((2 << 1) | 1, (3 << 1) | 1)
    assert made[0].resamples >= 1 and mmio.interrupt_status == 0


def test_an_edge_line_does_not_come_back(guest: Assemble) -> None:
    # The same guest on an edge: one interrupt, and a guest that waits for the second.
    result, mmio = _level_guest(guest, IrqfdLine, 2)
    assert result.reason != "exit"
    assert mmio.stats["interrupts"] == 1
