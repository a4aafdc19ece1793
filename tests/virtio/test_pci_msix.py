"""MSI-X on virtio-pci through a real VM: the driver's accesses go through the real buses,
each vector is a KVM MSI route with an irqfd, and what arrives is read from the in-kernel
local APIC (its IRR) of vCPU 0, so a message that KVM did not deliver cannot pass."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator

import pytest

import xinterface as xi
from tests.conftest import needs_kvm, wait_for
from tests.virtio.helpers import LineLog
from xinterface.devices.msi import FIRST_MSI_GSI, MsiRoutes
from xinterface.devices.pci.function import (
    BAR0,
    CAPABILITIES_POINTER,
    COMMAND,
    COMMAND_IO,
    COMMAND_MEMORY,
)
from xinterface.kvm import uapi
from xinterface.virtio.device import Interrupt, Status
from xinterface.virtio.driver import QueueDriver
from xinterface.virtio.pci import (
    CC_CONFIG_MSIX_VECTOR,
    CC_DEVICE_STATUS,
    CC_DRIVER_FEATURE,
    CC_DRIVER_FEATURE_SELECT,
    CC_QUEUE_DESC,
    CC_QUEUE_DEVICE,
    CC_QUEUE_DRIVER,
    CC_QUEUE_ENABLE,
    CC_QUEUE_MSIX_VECTOR,
    CC_QUEUE_SELECT,
    CC_QUEUE_SIZE,
    ISR_OFFSET,
    L_CONFIG,
    NOTIFY_OFFSET,
    VirtioPci,
)
from xinterface.virtio.pci.layout import L_CONFIG_MSIX, L_CONFIG_VECTOR, L_QUEUE_VECTOR
from xinterface.virtio.pci.msix import (
    CONTROL_ENABLE,
    CONTROL_FUNCTION_MASK,
    MSIX_BAR,
    MSIX_CAP_ID,
    PBA_OFFSET,
)
from xinterface.virtio.rng import VirtioRng

pytestmark = needs_kvm

IO_BASE, MEM_BASE, MSIX_BASE = 0xC000, 0xFEBF0000, 0xFEBE0000
NO_VECTOR = 0xFFFF
APIC_SVR, APIC_IRR = 0xF0, 0x200
MSG_ADDRESS = 0xFEE00000     # physical destination: APIC ID 0, vCPU 0


def irr(vm: xi.Vm, vector: int) -> bool:
    regs = vm.vcpus[0].get_state(uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state).regs
    word = struct.unpack_from("<I", bytes(regs), APIC_IRR + 0x10 * (vector // 32))[0]
    return bool(word >> vector % 32 & 1)


def clear_irr(vm: xi.Vm) -> None:
    lapic = vm.vcpus[0].get_state(uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state)
    for i in range(8):
        struct.pack_into("<I", lapic.regs, APIC_IRR + 0x10 * i, 0)
    vm.vcpus[0].set_state(uapi.KVM_SET_LAPIC, lapic)


class Rig:
    """A VM with a virtio-rng behind virtio-pci with MSI-X, its BARs programmed, its local
    APIC software-enabled (as a guest's would be before it takes interrupts)."""

    def __init__(self, vm: xi.Vm) -> None:
        self.vm = vm
        self.intf = xi.bind(vm)
        self.routes = MsiRoutes(self.intf)
        self.irq = LineLog()
        self.transport = VirtioPci(VirtioRng(queue_size=8), irq=self.irq, msi=self.routes)
        self.f = self.transport.function
        msix = self.transport.msix
        assert msix is not None
        self.msix = msix
        self.transport.attach(self.intf)
        self.cfg(BAR0, IO_BASE)
        self.cfg(BAR0 + 4 * MSIX_BAR, MSIX_BASE)
        self.cfg(BAR0 + 16, MEM_BASE)
        self.cfg(BAR0 + 20, 0)
        self.f.write(COMMAND, struct.pack("<H", COMMAND_IO | COMMAND_MEMORY))
        lapic = vm.vcpus[0].get_state(uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state)
        struct.pack_into("<I", lapic.regs, APIC_SVR, 0x1FF)   # APIC software enable
        vm.vcpus[0].set_state(uapi.KVM_SET_LAPIC, lapic)
        self.cap = self.find_cap(MSIX_CAP_ID)

    def find_cap(self, cap_id: int) -> int:
        at = self.f.read(CAPABILITIES_POINTER, 1)[0]
        while at:
            if self.f.read(at, 1)[0] == cap_id:
                return at
            at = self.f.read(at + 1, 1)[0]
        raise AssertionError(f"no capability {cap_id:#x}")

    def cfg(self, offset: int, value: int, size: int = 4) -> None:
        self.f.write(offset, value.to_bytes(size, "little"))

    def control(self, value: int) -> None:
        self.cfg(self.cap + 2, value, 2)

    def mmio(self, offset: int, value: int, size: int, base: int = MEM_BASE) -> bool:
        return self.vm.mmio_bus.write(base + offset, value.to_bytes(size, "little"))

    def mmio_read(self, offset: int, size: int, base: int = MEM_BASE) -> int | None:
        data = self.vm.mmio_bus.read(base + offset, size)
        return None if data is None else int.from_bytes(data, "little")

    def entry(self, vector: int, data: int, *, masked: bool = False,
              address: int = MSG_ADDRESS) -> None:
        at = 16 * vector
        self.mmio(at, address, 4, MSIX_BASE)
        self.mmio(at + 4, 0, 4, MSIX_BASE)
        self.mmio(at + 8, data, 4, MSIX_BASE)
        self.mmio(at + 12, int(masked), 4, MSIX_BASE)

    def pba(self) -> int:
        value = self.mmio_read(PBA_OFFSET, 8, MSIX_BASE)
        assert value is not None
        return value

    def modern_up(self, q: QueueDriver, vector: int) -> None:
        for status in (Status.ACKNOWLEDGE, Status.ACKNOWLEDGE | Status.DRIVER):
            self.mmio(CC_DEVICE_STATUS, status, 1)
        self.mmio(CC_DRIVER_FEATURE_SELECT, 1, 4)
        self.mmio(CC_DRIVER_FEATURE, 1, 4)
        self.mmio(CC_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 1)
        self.mmio(CC_QUEUE_SELECT, 0, 2)
        self.mmio(CC_QUEUE_SIZE, q.size, 2)
        self.mmio(CC_QUEUE_MSIX_VECTOR, vector, 2)
        for field, addr in ((CC_QUEUE_DESC, q.desc_addr), (CC_QUEUE_DRIVER, q.avail_addr),
                            (CC_QUEUE_DEVICE, q.used_addr)):
            self.mmio(field, addr & 0xFFFFFFFF, 4)
            self.mmio(field + 4, addr >> 32, 4)
        self.mmio(CC_QUEUE_ENABLE, 1, 2)
        self.mmio(CC_DEVICE_STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK
                  | Status.DRIVER_OK, 1)

    def request(self, q: QueueDriver) -> None:
        q.post([(0x20000, 16, True)])
        self.mmio(NOTIFY_OFFSET, 0, 2)


@pytest.fixture
def vm() -> Iterator[xi.Vm]:
    with xi.Vm(memory=1 << 20, irqchip=True) as v:
        yield v


def test_capability_and_bar_as_the_pci_spec_lays_them_out(vm: xi.Vm) -> None:
    rig = Rig(vm)
    control, table, pba = struct.unpack("<HII", rig.f.read(rig.cap + 2, 10))
    assert control == 1                       # table size N-1: a vector for the queue + config
    assert table == 0 | MSIX_BAR and pba == PBA_OFFSET | MSIX_BAR
    # BAR1: 4 KiB of 32-bit memory (sizing reads the mask back)
    assert rig.f.bar_sizing_value(MSIX_BAR) == 0xFFFFF000
    # after reset every entry is masked (PCI 3.0 6.8.2.9), nothing pending
    assert rig.mmio_read(12, 4, MSIX_BASE) == 1 and rig.pba() == 0
    # only Enable and Function Mask are the driver's: the table size stays
    rig.control(0xFFFF)
    assert struct.unpack("<H", rig.f.read(rig.cap + 2, 2))[0] == (
        CONTROL_ENABLE | CONTROL_FUNCTION_MASK | 1)
    rig.control(0)
    assert struct.unpack("<H", rig.f.read(rig.cap + 2, 2))[0] == 1
    rig.cfg(rig.cap + 4, 0xFFFFFFFF)          # the table offset is read-only
    assert struct.unpack("<I", rig.f.read(rig.cap + 4, 4))[0] == MSIX_BAR


def test_a_queue_interrupt_is_its_vectors_message_and_no_intx(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    rig.entry(0, 0x40)
    rig.entry(1, 0x41)
    rig.mmio(CC_CONFIG_MSIX_VECTOR, 0, 2)
    assert rig.mmio_read(CC_CONFIG_MSIX_VECTOR, 2) == 0
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q, 1)
    assert rig.mmio_read(CC_QUEUE_MSIX_VECTOR, 2) == 1
    rig.request(q)
    assert q.used() == [(0, 16)]
    assert wait_for(lambda: irr(vm, 0x41), 2)
    assert not irr(vm, 0x40)                  # the configuration vector did not fire
    assert rig.irq.levels == [] and rig.transport.isr == 0   # no ISR bit, no INTx
    assert rig.routes.message(rig.msix.gsi(1) or 0) == (MSG_ADDRESS, 0, 0x41)
    # a configuration change: its own vector, and the ISR's configuration bit (no INTx)
    clear_irr(vm)
    rig.transport.device.update_config(0, b"")
    assert wait_for(lambda: irr(vm, 0x40), 2) and not irr(vm, 0x41)
    assert rig.mmio_read(ISR_OFFSET, 1) == Interrupt.CONFIG and rig.irq.levels == []


def test_masked_vectors_pend_and_fire_on_unmask(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    rig.entry(1, 0x51, masked=True)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q, 1)
    rig.request(q)
    assert q.used() == [(0, 16)]
    assert rig.pba() == 0b10 and not irr(vm, 0x51)
    rig.mmio(16 + 12, 0, 4, MSIX_BASE)        # unmask: the pending message goes out
    assert wait_for(lambda: irr(vm, 0x51), 2) and rig.pba() == 0
    clear_irr(vm)
    rig.control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)   # the whole function masked
    rig.request(q)
    assert rig.pba() == 0b10 and not irr(vm, 0x51)
    rig.control(CONTROL_ENABLE)
    assert wait_for(lambda: irr(vm, 0x51), 2) and rig.pba() == 0


def test_the_route_follows_the_entry_the_driver_writes(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    rig.entry(1, 0x61)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q, 1)
    writes = rig.routes.writes
    rig.mmio(16 + 8, 0x62, 4, MSIX_BASE)      # new data for a live vector: the table again
    assert rig.routes.writes == writes + 1
    rig.request(q)
    assert wait_for(lambda: irr(vm, 0x62), 2) and not irr(vm, 0x61)
    # an 8-byte write of data and vector control together
    rig.mmio(16 + 8, 0x63, 8, MSIX_BASE)
    clear_irr(vm)
    rig.request(q)
    assert wait_for(lambda: irr(vm, 0x63), 2)
    # an address outside the local APICs' window routes nowhere: nothing delivered
    rig.entry(1, 0x64, address=0x1000)
    clear_irr(vm)
    rig.request(q)
    assert len(q.used()) == 3 and rig.msix.stats["unrouted"] == 1
    assert not any(irr(vm, v) for v in range(0x20, 0x100))
    # the routes of the irqchip are still KVM's default: GSI 10 reaches the IOAPIC
    rig.intf.set_irq(10, True)
    rig.intf.set_irq(10, False)
    assert rig.msix.gsi(0) == FIRST_MSI_GSI


def test_msix_off_means_intx_again(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    rig.entry(1, 0x71)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.modern_up(q, 1)
    rig.request(q)
    assert wait_for(lambda: irr(vm, 0x71), 2) and rig.irq.levels == []
    rig.control(0)
    clear_irr(vm)
    rig.request(q)
    assert rig.irq.levels == [True] and not irr(vm, 0x71)
    assert rig.mmio_read(ISR_OFFSET, 1) == 1 and rig.irq.levels == [True, False]


def test_vector_numbers_the_function_cannot_map_read_no_vector(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    for vector in (2, 0x7FF, 0xFFFE):
        rig.mmio(CC_CONFIG_MSIX_VECTOR, vector, 2)
        assert rig.mmio_read(CC_CONFIG_MSIX_VECTOR, 2) == NO_VECTOR
        rig.mmio(CC_QUEUE_MSIX_VECTOR, vector, 2)
        assert rig.mmio_read(CC_QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    rig.mmio(CC_QUEUE_SELECT, 9, 2)           # no such queue
    rig.mmio(CC_QUEUE_MSIX_VECTOR, 0, 2)
    assert rig.mmio_read(CC_QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    rig.mmio(CC_QUEUE_SELECT, 0, 2)
    rig.mmio(CC_QUEUE_MSIX_VECTOR, 1, 2)
    rig.mmio(CC_DEVICE_STATUS, 0, 1)          # a reset forgets the assignments
    assert rig.mmio_read(CC_QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    # a used buffer for a queue without a vector sends nothing (virtio 1.2 4.1.5.1.2)
    q = QueueDriver(rig.intf, 0x10000, 8)
    rig.entry(0, 0x75)
    rig.entry(1, 0x76)
    rig.modern_up(q, NO_VECTOR)
    rig.request(q)
    assert q.used() == [(0, 16)] and rig.msix.stats["no_vector"] == 1
    assert not irr(vm, 0x75) and not irr(vm, 0x76) and rig.irq.levels == []


def test_legacy_block_has_the_vector_registers_and_moves_its_config(vm: xi.Vm) -> None:
    rig = Rig(vm)

    def pio(offset: int, value: int, size: int) -> None:
        vm.pio_bus.write(IO_BASE + offset, value.to_bytes(size, "little"))

    def pio_read(offset: int, size: int) -> bytes:
        data = vm.pio_bus.read(IO_BASE + offset, size)
        assert data is not None
        return data

    config = rig.transport.device.read_config(0, 4)
    assert pio_read(L_CONFIG, 4) == config    # without MSI-X: the config at 0x14
    rig.control(CONTROL_ENABLE)
    pio(L_CONFIG_VECTOR, 0, 2)
    pio(L_QUEUE_VECTOR, 1, 2)
    assert pio_read(L_CONFIG_VECTOR, 2) == b"\0\0" and pio_read(L_QUEUE_VECTOR, 2) == b"\1\0"
    assert pio_read(L_CONFIG_MSIX, 4) == config    # and 4 bytes on with it (4.1.4.10)
    pio(L_QUEUE_VECTOR, 5, 2)                       # past the table
    assert pio_read(L_QUEUE_VECTOR, 2) == b"\xff\xff"
    pio(L_CONFIG_VECTOR, 0x01, 1)                   # a byte of a 2-byte register: dropped
    assert rig.transport.stats["bad_access"] == 1
    assert rig.msix.config_vector == 0


def test_hostile_table_accesses_get_what_hardware_gives(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    before = bytes(rig.msix.table)
    for offset, size in ((0, 1), (0, 2), (2, 4), (4, 8), (3, 1)):
        assert rig.mmio_read(offset, size, MSIX_BASE) == (1 << 8 * size) - 1
        rig.mmio(offset, 0x5A5A5A5A5A5A5A5A & ((1 << 8 * size) - 1), size, MSIX_BASE)
    assert bytes(rig.msix.table) == before and rig.msix.stats["bad_access"] == 10
    rig.mmio(12, 0xFFFFFFFF, 4, MSIX_BASE)    # vector control: only the mask bit exists
    assert rig.mmio_read(12, 4, MSIX_BASE) == 1
    rig.mmio(PBA_OFFSET, 0xFF, 8, MSIX_BASE)  # the PBA is read-only
    assert rig.pba() == 0
    rig.mmio(0x100, 0x1234, 4, MSIX_BASE)     # past the table, before the PBA: nothing
    assert rig.mmio_read(0x100, 4, MSIX_BASE) == 0
    assert rig.mmio_read(0xFFC, 4, MSIX_BASE) == 0
    for v in range(2):                         # any message at all: a route or none, no error
        rig.entry(v, 0xFFFFFFFF, address=0xFEEFFFFC)
    assert rig.msix.fire(1)


def test_save_and_load_carry_the_drivers_state(vm: xi.Vm) -> None:
    rig = Rig(vm)
    rig.control(CONTROL_ENABLE)
    rig.entry(1, 0x81, masked=True)
    rig.mmio(CC_QUEUE_SELECT, 0, 2)
    rig.mmio(CC_QUEUE_MSIX_VECTOR, 1, 2)
    assert rig.msix.fire(1) and rig.pba() == 0b10
    saved = rig.msix.save()
    with xi.Vm(memory=1 << 20, irqchip=True) as other:
        twin = Rig(other)
        for bad in ({**saved, "table": "00"}, {**saved, "pending": 1 << 40},
                    {**saved, "enabled": 1}, {**saved, "queue_vectors": [True]},
                    {**saved, "table": "zz" * 32}, {}):
            with pytest.raises(xi.XInterfaceError) as info:
                twin.msix.load(bad)
            assert info.value.errno == errno.EINVAL
        assert twin.msix.save() != saved          # nothing half-loaded
        twin.msix.load(saved)
        assert twin.msix.save() == saved and twin.pba() == 0b10
        assert struct.unpack("<H", twin.f.read(twin.cap + 2, 2))[0] & CONTROL_ENABLE
        twin.mmio(16 + 12, 0, 4, MSIX_BASE)       # unmask after the restore: delivered
        assert wait_for(lambda: irr(other, 0x81), 2)


def test_another_processes_eventfd_reaches_the_guest_without_us(vm: xi.Vm) -> None:
    # What a vhost-user backend's call fd gets: bound as the irqfd of the queue's vector.
    rig = Rig(vm)
    told: list[tuple[int, bool]] = []
    rig.msix.on_direct = lambda queue, direct: told.append((queue, direct))
    call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        rig.msix.add_source(0, call)
        assert told == []                      # MSI-X off: the owner relays it
        rig.control(CONTROL_ENABLE)
        rig.entry(1, 0x91)
        rig.mmio(CC_QUEUE_SELECT, 0, 2)
        rig.mmio(CC_QUEUE_MSIX_VECTOR, 1, 2)
        assert told == [(0, True)]
        os.eventfd_write(call, 1)
        assert wait_for(lambda: irr(vm, 0x91), 2)
        assert rig.msix.stats["fired"] == 0    # KVM did it: nothing here fired
        clear_irr(vm)
        rig.mmio(16 + 12, 1, 4, MSIX_BASE)     # masked: the count stays in the eventfd
        os.eventfd_write(call, 1)
        assert rig.pba() == 0b10 and not irr(vm, 0x91)
        rig.mmio(16 + 12, 0, 4, MSIX_BASE)     # unmasked: KVM injects what was pending
        assert wait_for(lambda: irr(vm, 0x91), 2)
        rig.control(0)
        assert told == [(0, True), (0, False)]
        rig.transport.detach()
    finally:
        os.close(call)


def test_routes_refuse_what_they_cannot_do() -> None:
    with xi.Vm(memory=1 << 20) as bare:
        with pytest.raises(xi.XInterfaceError) as info:
            MsiRoutes(xi.bind(bare))             # no in-kernel irqchip: no routing table
        assert info.value.errno == errno.EOPNOTSUPP
    with xi.Vm(memory=1 << 20, irqchip=True) as vm:
        intf = xi.bind(vm)
        routes = MsiRoutes(intf)
        gsi = routes.allocate()
        assert gsi == FIRST_MSI_GSI and routes.allocate() == gsi + 1
        with pytest.raises(xi.XInterfaceError) as info:
            routes.set(5, (MSG_ADDRESS, 0, 0x30))   # an irqchip pin is not ours to route
        assert info.value.errno == errno.EINVAL and info.value.argument == "gsi"
        writes = routes.writes
        routes.set(gsi, (MSG_ADDRESS, 0, 0x30))
        routes.set(gsi, (MSG_ADDRESS, 0, 0x30))      # unchanged: no second table
        assert routes.writes == writes + 1
        for bad in ("3", -1):
            with pytest.raises(xi.XInterfaceError) as info:
                intf.irqfd(gsi, eventfd=bad)        # type: ignore[arg-type]
            assert info.value.errno == errno.EBADF and info.value.argument == "eventfd"
        fd = os.eventfd(0)
        first = intf.irqfd(gsi, eventfd=fd)
        with pytest.raises(xi.XInterfaceError) as info:
            intf.irqfd(gsi, eventfd=fd)              # one eventfd, one irqfd per VM
        assert info.value.errno == errno.EBUSY
        first.deassign()
        os.eventfd_write(fd, 1)                      # the caller's eventfd is still open
        os.close(fd)
