"""virtio-pci registers, BAR moves and hostile drivers, through the real buses of a real VM:
every access below goes through ``bus.write``/``bus.read`` exactly as a vCPU's exit would,
and the queues live in the VM's RAM."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.virtio.helpers import LineLog
from xinterface.delivery import Delivery
from xinterface.devices.pci import PciHost
from xinterface.devices.pci.function import (
    BAR0,
    COMMAND,
    COMMAND_INTX_DISABLE,
    COMMAND_IO,
    COMMAND_MEMORY,
)
from xinterface.virtio.device import Status
from xinterface.virtio.driver import QueueDriver
from xinterface.virtio.pci import (
    CC_DEVICE_FEATURE,
    CC_DEVICE_FEATURE_SELECT,
    CC_DEVICE_STATUS,
    CC_DRIVER_FEATURE,
    CC_DRIVER_FEATURE_SELECT,
    CC_NUM_QUEUES,
    CC_QUEUE_DESC,
    CC_QUEUE_DEVICE,
    CC_QUEUE_DRIVER,
    CC_QUEUE_ENABLE,
    CC_QUEUE_SELECT,
    CC_QUEUE_SIZE,
    ISR_OFFSET,
    L_DEVICE_STATUS,
    L_QUEUE_ADDRESS,
    L_QUEUE_NOTIFY,
    L_QUEUE_SELECT,
    L_QUEUE_SIZE,
    NOTIFY_OFFSET,
    VirtioPci,
)
from xinterface.virtio.rng import VirtioRng

pytestmark = needs_kvm

IO_BASE, MEM_BASE = 0xC000, 0xFEBF0000


class Rig:
    """A VM with one virtio-rng behind virtio-pci, its BARs programmed as firmware would."""

    def __init__(self, vm: xi.Vm, doorbells: Delivery = Delivery.SYNC) -> None:
        self.vm = vm
        self.intf = xi.bind(vm)
        self.irq = LineLog()
        self.lines = self.irq.levels
        self.transport = VirtioPci(VirtioRng(queue_size=8), irq=self.irq, doorbells=doorbells)
        self.f = self.transport.function
        self.transport.attach(self.intf)
        self.cfg(BAR0, IO_BASE)
        self.cfg(BAR0 + 16, MEM_BASE)
        self.cfg(BAR0 + 20, 0)
        self.f.write(COMMAND, struct.pack("<H", COMMAND_IO | COMMAND_MEMORY))

    def cfg(self, offset: int, value: int, size: int = 4) -> None:
        self.f.write(offset, value.to_bytes(size, "little"))

    def mmio(self, offset: int, value: int, size: int, base: int = MEM_BASE) -> bool:
        return self.vm.mmio_bus.write(base + offset, value.to_bytes(size, "little"))

    def mmio_read(self, offset: int, size: int, base: int = MEM_BASE) -> int | None:
        data = self.vm.mmio_bus.read(base + offset, size)
        return None if data is None else int.from_bytes(data, "little")

    def pio(self, offset: int, value: int, size: int) -> bool:
        return self.vm.pio_bus.write(IO_BASE + offset, value.to_bytes(size, "little"))

    def pio_read(self, offset: int, size: int) -> int:
        data = self.vm.pio_bus.read(IO_BASE + offset, size)
        assert data is not None
        return int.from_bytes(data, "little")

    def modern_up(self, q: QueueDriver) -> None:
        for status in (Status.ACKNOWLEDGE, Status.ACKNOWLEDGE | Status.DRIVER):
            self.mmio(CC_DEVICE_STATUS, status, 1)
        self.mmio(CC_DRIVER_FEATURE_SELECT, 1, 4)
        self.mmio(CC_DRIVER_FEATURE, 1, 4)                  # VERSION_1 (bit 32)
        self.mmio(CC_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 1)
        self.mmio(CC_QUEUE_SELECT, 0, 2)
        self.mmio(CC_QUEUE_SIZE, q.size, 2)
        for field, addr in ((CC_QUEUE_DESC, q.desc_addr), (CC_QUEUE_DRIVER, q.avail_addr),
                            (CC_QUEUE_DEVICE, q.used_addr)):
            self.mmio(field, addr & 0xFFFFFFFF, 4)          # 64-bit fields as two halves
            self.mmio(field + 4, addr >> 32, 4)
        self.mmio(CC_QUEUE_ENABLE, 1, 2)
        self.mmio(CC_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK
                  | Status.DRIVER_OK, 1)


@pytest.fixture
def vm() -> Iterator[xi.Vm]:
    with xi.Vm(memory=1 << 20, irqchip=True) as v:
        yield v


@pytest.mark.parametrize("doorbells", [Delivery.SYNC, Delivery.EVENTFD])
def test_modern_driver_gets_entropy_and_an_intx(vm: xi.Vm, doorbells: Delivery) -> None:
    rig = Rig(vm, doorbells)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q)
    assert rig.mmio_read(CC_NUM_QUEUES, 2) == 1
    assert rig.transport.device.status & Status.DRIVER_OK
    q.post([(0x20000, 64, True)])
    if doorbells is Delivery.SYNC:
        rig.mmio(NOTIFY_OFFSET, 0, 2)      # the doorbell xioevent: payload = queue index
    else:
        vm.mmio_bus.write(MEM_BASE + NOTIFY_OFFSET, b"\0\0")  # no exit path here: the
        # ioeventfd lives in KVM, so the iorange beneath serves the direct bus write
    assert q.used() == [(0, 64)]
    assert rig.intf.copy_from(0x20000, 64) != bytes(64)
    assert rig.lines == [True]
    assert rig.mmio_read(ISR_OFFSET, 1) == 1 and rig.lines == [True, False]
    assert rig.mmio_read(ISR_OFFSET, 1) == 0    # reading cleared it


def test_interrupt_disable_holds_intx_down(vm: xi.Vm) -> None:
    # PCI 3.0, 6.2.2: with Interrupt Disable set the function does not assert INTx; the
    # next interrupt after it is cleared does, though the ISR was never read in between.
    rig = Rig(vm)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q)
    rig.f.write(COMMAND, struct.pack("<H", COMMAND_IO | COMMAND_MEMORY | COMMAND_INTX_DISABLE))
    q.post([(0x20000, 16, True)])
    rig.mmio(NOTIFY_OFFSET, 0, 2)
    assert q.used() == [(0, 16)] and rig.transport.isr == 1 and rig.lines == []
    rig.f.write(COMMAND, struct.pack("<H", COMMAND_IO | COMMAND_MEMORY))
    q.post([(0x20000, 16, True)])
    rig.mmio(NOTIFY_OFFSET, 0, 2)
    assert rig.lines == [True]
    assert rig.mmio_read(ISR_OFFSET, 1) == 1 and rig.lines == [True, False]


def test_legacy_driver_through_the_io_bar(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.pio(L_DEVICE_STATUS, 0, 1)
    rig.pio(L_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER, 1)
    rig.pio(L_QUEUE_SELECT, 0, 2)
    assert rig.pio_read(L_QUEUE_SIZE, 2) == 8
    rig.pio(L_QUEUE_ADDRESS, 0x10000 >> 12, 4)
    rig.pio(L_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK, 1)
    q = QueueDriver(rig.intf, 0x10000, 8)
    q.used_addr = 0x10000 + 0x1000        # legacy layout: the used ring on the next page
    q.post([(0x20000, 32, True)])
    assert rig.pio(L_QUEUE_NOTIFY, 0, 2)   # the seed's case: outw with the queue index
    assert q.used() == [(0, 32)]
    assert rig.transport.device.legacy


def test_registrations_follow_the_bars_the_guest_moves(vm: xi.Vm) -> None:
    rig = Rig(vm)
    assert rig.mmio_read(CC_NUM_QUEUES, 2) == 1
    rig.cfg(BAR0 + 16, 0xFEA00000)
    assert rig.mmio_read(CC_NUM_QUEUES, 2) is None          # nothing left at the old place
    assert rig.mmio_read(CC_NUM_QUEUES, 2, base=0xFEA00000) == 1
    rig.f.write(COMMAND, struct.pack("<H", COMMAND_IO))       # memory decode off
    assert rig.mmio_read(CC_NUM_QUEUES, 2, base=0xFEA00000) is None
    assert rig.pio_read(L_QUEUE_SIZE, 2) == 8                 # the I/O BAR still decodes
    before = len(vm.mmio_bus), len(vm.pio_bus)
    rig.transport.detach()
    assert (len(vm.mmio_bus), len(vm.pio_bus)) < before


def test_hostile_driver_gets_what_hardware_gives(vm: xi.Vm) -> None:
    other = vm.mmio_bus  # a second device's BAR already at 0xFEA00000
    xi.bind(vm).iorange(0xFEA00000, 0x1000, name="someone else")
    rig = Rig(vm)
    rig.cfg(BAR0 + 16, 0xFEA00000)                            # on top of it: left dark
    assert rig.transport.stats["modern_bar_map_failed"] == 1
    assert other.read(0xFEA00000 + CC_NUM_QUEUES, 2) is None   # the other device is untouched
    rig.cfg(BAR0 + 16, MEM_BASE)
    assert rig.mmio_read(CC_NUM_QUEUES, 2) == 1               # and it recovers when moved
    rig.mmio(CC_QUEUE_SELECT, 7, 2)                           # a queue that does not exist
    assert rig.mmio_read(CC_QUEUE_SIZE, 2) == 0
    rig.mmio(CC_QUEUE_SIZE, 3, 2)
    assert rig.transport.stats["bad_queue_select"] == 1
    rig.mmio(NOTIFY_OFFSET, 5, 2)                             # doorbells of a missing queue
    assert rig.transport.device.stats["notify_ignored"] == 1
    rig.mmio(0x3F00, 0xFFFF, 2)                               # nowhere in particular
    rig.mmio(CC_QUEUE_SELECT, 0, 2)
    rig.mmio(CC_QUEUE_SIZE, 3, 2)                             # not a power of two
    rig.mmio(CC_QUEUE_ENABLE, 1, 2)
    assert rig.transport.device.status & Status.DEVICE_NEEDS_RESET
    rig.mmio(CC_DEVICE_STATUS, 0, 1)                          # a reset clears the error
    assert rig.transport.device.status == 0
    cap = rig.transport.function.cfg_cap                      # PCI cfg window, bogus bar/len
    rig.cfg(cap + 4, 3, 1)
    rig.cfg(cap + 12, 3)
    assert rig.f.read(cap + 16, 4) == bytes(4)
    rig.cfg(cap + 16, 0xFFFFFFFF)                             # dropped


def test_legacy_block_reads_a_queue_above_16_tib_as_its_field_holds() -> None:
    # A modern driver may put a queue anywhere in RAM; the legacy QueueAddress field holds
    # a 32-bit page number, so a queue at 2^44 shows the bits that fit (hardware does no
    # more), and every other legacy register still reads.
    high = 1 << 44
    with xi.Vm(memory=[(0, 1 << 20), (high, 1 << 20)], irqchip=True) as vm:
        rig = Rig(vm)
        rig.modern_up(QueueDriver(rig.intf, high + 0x10000, 8))
        assert rig.transport.device.queues[0].ready
        rig.pio(L_QUEUE_SELECT, 0, 2)
        assert rig.pio_read(L_QUEUE_ADDRESS, 4) == (high + 0x10000) >> 12 & 0xFFFFFFFF
        assert rig.pio_read(L_QUEUE_SIZE, 2) == 8
        assert rig.pio_read(L_DEVICE_STATUS, 1) & Status.DRIVER_OK
        assert rig.pio_read(0, 4) == rig.transport.device.device_features & 0xFFFFFFFF


def test_modern_feature_selectors_past_the_last_word_reach_nothing(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.mmio(CC_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER, 1)
    rig.mmio(CC_DRIVER_FEATURE_SELECT, 1, 4)
    rig.mmio(CC_DRIVER_FEATURE, 1, 4)
    for sel in (2, 0xFFFF_FFFF):
        rig.mmio(CC_DRIVER_FEATURE_SELECT, sel, 4)
        rig.mmio(CC_DRIVER_FEATURE, 0xFFFF_FFFF, 4)
        assert rig.mmio_read(CC_DRIVER_FEATURE, 4) == 0
        rig.mmio(CC_DEVICE_FEATURE_SELECT, sel, 4)
        assert rig.mmio_read(CC_DEVICE_FEATURE, 4) == 0
    assert rig.transport.device.driver_features == 1 << 32


def test_host_bridge_serves_the_function_at_its_slot(vm: xi.Vm) -> None:
    host = PciHost()
    transport = VirtioPci(VirtioRng())
    host.add(3, transport.function)
    with pytest.raises(ValueError):
        host.add(3, transport.function)
    intf = xi.bind(vm)
    host.attach(intf)
    vm.pio_bus.write(0xCF8, struct.pack("<I", 0x80000000 | 3 << 11))
    assert vm.pio_bus.read(0xCFC, 4) == struct.pack("<HH", 0x1AF4, 0x1005)
    vm.pio_bus.write(0xCF8, struct.pack("<I", 0x80000000 | 4 << 11))
    assert vm.pio_bus.read(0xCFC, 4) == b"\xff" * 4
