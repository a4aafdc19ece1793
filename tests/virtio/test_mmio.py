"""virtio-mmio's registers (§4.2.2), modern and legacy, through the MMIO bus a vCPU's exits
reach (the same dispatch: the QueueNotify xioevent first, then the register window)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, MEMORY, Echo, LineLog
from xinterface.virtio import Status, VirtioMmio, VirtioRng
from xinterface.virtio import mmio as r
from xinterface.virtio.driver import QueueDriver

pytestmark = needs_kvm
BASE = 0xD000_0000


@dataclass
class Bus:
    machine: xi.Machine
    intf: xi.XInterface
    mmio: VirtioMmio
    raised: list[int]

    def read(self, offset: int, size: int = 4) -> int:
        data = self.machine.mmio_bus.read(BASE + offset, size)
        assert data is not None
        return int.from_bytes(data, "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        assert self.machine.mmio_bus.write(BASE + offset, value.to_bytes(size, "little"))

    def init(self, *, queues: list[QueueDriver], features: int = 1 << 32) -> None:
        self.write(r.STATUS, 0)
        self.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
        for word in range(2):
            self.write(r.DRIVER_FEATURES_SEL, word)
            self.write(r.DRIVER_FEATURES, features >> (32 * word) & 0xFFFFFFFF)
        self.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        for i, q in enumerate(queues):
            self.write(r.QUEUE_SEL, i)
            self.write(r.QUEUE_NUM, q.size)
            for low, addr in ((r.QUEUE_DESC_LOW, q.desc_addr), (r.QUEUE_DRIVER_LOW, q.avail_addr),
                              (r.QUEUE_DEVICE_LOW, q.used_addr)):
                self.write(low, addr & 0xFFFFFFFF)
                self.write(low + 4, addr >> 32)
            self.write(r.QUEUE_READY, 1)
        self.write(r.STATUS, 0x0F)


def _bus(device: Echo | VirtioRng | None = None, version: int = 2) -> Iterator[Bus]:
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        line = LineLog()
        mmio = VirtioMmio(device or Echo(), BASE, irq=line, version=version)
        mmio.attach(intf)
        yield Bus(m, intf, mmio, line.edges)
        mmio.detach()


@pytest.fixture
def bus() -> Iterator[Bus]:
    yield from _bus()


def test_identification_registers(bus: Bus) -> None:
    assert bus.read(r.MAGIC_VALUE) == 0x74726976
    assert bus.read(r.VERSION) == 2
    assert bus.read(r.DEVICE_ID) == 63
    assert bus.read(r.VENDOR_ID) == 0x554D4551
    bus.write(r.DEVICE_FEATURES_SEL, 1)
    assert bus.read(r.DEVICE_FEATURES) == 1            # VIRTIO_F_VERSION_1
    bus.write(r.DEVICE_FEATURES_SEL, 0)
    assert bus.read(r.DEVICE_FEATURES) == 3 << 28      # INDIRECT_DESC, EVENT_IDX
    bus.write(r.DEVICE_FEATURES_SEL, 2)
    assert bus.read(r.DEVICE_FEATURES) == 0
    assert bus.read(r.SHM_LEN_LOW) == 0xFFFFFFFF       # no shared memory region
    assert bus.read(r.QUEUE_RESET) == 0


def test_queue_registers(bus: Bus) -> None:
    assert bus.read(r.QUEUE_NUM_MAX) == 8
    bus.write(r.QUEUE_SEL, 1)
    assert bus.read(r.QUEUE_NUM_MAX) == 0             # no queue 1
    bus.write(r.QUEUE_READY, 1)
    assert bus.read(r.QUEUE_READY) == 0
    assert bus.mmio.stats["bad_queue_select"] == 1


def test_a_request_through_the_doorbell_and_the_interrupt(bus: Bus) -> None:
    q = QueueDriver(bus.intf, 0x10000, 8)
    bus.init(queues=[q])
    assert bus.read(r.STATUS) == 0x0F
    assert bus.read(r.QUEUE_READY) == 1
    bus.intf.copy_to(BUF, b"ring")
    q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
    bus.write(r.QUEUE_NOTIFY, 0)                       # the 4-byte doorbell: an xioevent
    assert q.used() == [(0, 4)]
    assert bus.mmio.stats["doorbell"] == 1
    assert bus.raised == [1]
    assert bus.read(r.INTERRUPT_STATUS) == 1
    bus.write(r.INTERRUPT_ACK, 1)
    assert bus.read(r.INTERRUPT_STATUS) == 0
    # A doorbell of another size is not the event's: it reaches the window, which drops it.
    q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
    bus.write(r.QUEUE_NOTIFY, 0, size=2)
    assert q.used() == [] and bus.mmio.stats["bad_access"] == 1
    bus.write(r.QUEUE_NOTIFY, 5)                       # no queue 5: ignored
    assert bus.mmio.device.stats["notify_ignored"] == 1


def test_feature_selectors_past_the_last_word_reach_nothing(bus: Bus) -> None:
    # Only 64 feature bits exist: a selector of any other word shows 0 and takes no write
    # (the device must not build a mask 2^32 words wide from a hostile selector).
    bus.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
    bus.write(r.DRIVER_FEATURES_SEL, 1)
    bus.write(r.DRIVER_FEATURES, 1)                    # VERSION_1
    for sel in (2, 0x8000_0000, 0xFFFF_FFFF):
        bus.write(r.DRIVER_FEATURES_SEL, sel)
        bus.write(r.DRIVER_FEATURES, 0xFFFF_FFFF)
        bus.write(r.DEVICE_FEATURES_SEL, sel)
        assert bus.read(r.DEVICE_FEATURES) == 0
    assert bus.mmio.device.driver_features == 1 << 32
    assert bus.mmio.device.stats["feature_write_dropped"] == 3
    bus.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    assert bus.read(r.STATUS) & Status.FEATURES_OK


def test_live_queue_configuration_cannot_change(bus: Bus) -> None:
    q = QueueDriver(bus.intf, 0x10000, 8)
    bus.init(queues=[q])
    bus.write(r.QUEUE_NUM, 4)
    bus.write(r.QUEUE_DESC_LOW, 0x30000)
    vq = bus.mmio.device.queues[0]
    assert (vq.size, vq.desc_addr) == (8, 0x10000)
    assert bus.mmio.stats["live_queue_write"] == 2


def test_bad_queue_size_from_the_driver_means_needs_reset(bus: Bus) -> None:
    q = QueueDriver(bus.intf, 0x10000, 8)
    q.size = 5
    bus.init(queues=[q])
    assert bus.read(r.QUEUE_READY) == 0
    assert bus.read(r.STATUS) & Status.DEVICE_NEEDS_RESET
    # Broken before DRIVER_OK: the configuration change interrupt comes with DRIVER_OK.
    assert bus.read(r.INTERRUPT_STATUS) == 2 and bus.raised == [1]


def test_reset_clears_interrupt_status_and_ready_bits(bus: Bus) -> None:
    q = QueueDriver(bus.intf, 0x10000, 8)
    bus.init(queues=[q])
    q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
    bus.write(r.QUEUE_NOTIFY, 0)
    assert bus.read(r.INTERRUPT_STATUS) == 1
    bus.write(r.STATUS, 0)
    assert bus.read(r.STATUS) == 0
    assert bus.read(r.INTERRUPT_STATUS) == 0
    assert bus.read(r.QUEUE_READY) == 0


def test_wrong_width_register_accesses_are_harmless(bus: Bus) -> None:
    assert bus.read(r.MAGIC_VALUE, 2) == 0
    assert bus.read(r.MAGIC_VALUE + 1, 4) == 0
    bus.write(r.STATUS, 1, size=1)
    bus.write(r.STATUS + 2, 1, size=4)
    assert bus.read(r.STATUS) == 0
    assert bus.mmio.stats["bad_access"] == 4


def test_configuration_space_and_generation() -> None:
    class Configured(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.config[:] = b"\x11\x22\x33\x44\x55\x66\x77\x88"

    for bus in _bus(Configured()):
        assert bus.read(r.CONFIG, 1) == 0x11
        assert bus.read(r.CONFIG + 2, 2) == 0x4433
        assert bus.read(r.CONFIG, 8) == 0x8877665544332211
        assert bus.read(r.CONFIG + 0xF8, 8) == 0               # past its end
        generation = bus.read(r.CONFIG_GENERATION)
        bus.mmio.device.update_config(0, b"\x99")
        assert bus.read(r.CONFIG_GENERATION) == generation + 1


def test_legacy_interface_version_1() -> None:
    for bus in _bus(VirtioRng(queue_size=16), version=1):
        assert bus.read(r.VERSION) == 1
        assert bus.read(r.DEVICE_ID) == 4
        bus.write(r.DEVICE_FEATURES_SEL, 1)
        assert bus.read(r.DEVICE_FEATURES) == 0                # no VERSION_1 in legacy
        bus.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
        bus.write(r.DRIVER_FEATURES, 0)
        bus.write(r.GUEST_PAGE_SIZE, 4096)
        bus.write(r.QUEUE_SEL, 0)
        assert bus.read(r.QUEUE_NUM_MAX) == 16
        assert bus.read(r.QUEUE_PFN) == 0
        q = QueueDriver(bus.intf, 0x40000, 16, used_align=4096)
        bus.write(r.QUEUE_NUM, 16)
        bus.write(r.QUEUE_ALIGN, 4096)
        bus.write(r.QUEUE_PFN, 0x40)
        assert bus.read(r.QUEUE_PFN) == 0x40
        vq = bus.mmio.device.queues[0]
        assert (vq.desc_addr, vq.avail_addr, vq.used_addr) == (
            q.desc_addr, q.avail_addr, q.used_addr) == (0x40000, 0x40100, 0x41000)
        bus.write(r.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK)
        q.post([(BUF, 32, True)])
        bus.write(r.QUEUE_NOTIFY, 0)
        assert q.used() == [(0, 32)]
        assert bus.intf.copy_from(BUF, 32) != bytes(32)
        bus.write(r.QUEUE_PFN, 0)                               # the driver stops the queue
        assert bus.read(r.QUEUE_PFN) == 0 and not vq.ready


def test_eventfd_mode_registers_one_ioeventfd_per_queue() -> None:
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        dev = Echo()
        dev.queues.append(type(dev.queues[0])(1, 8))
        mmio = VirtioMmio(dev, BASE, doorbells=xi.Delivery.EVENTFD)
        mmio.attach(intf)
        events = [e for e in mmio._entries if isinstance(e, xi.XIOEventFd)]
        assert [(e.addr, e.length, e.datamatch) for e in events] == [
            (BASE + r.QUEUE_NOTIFY, 4, 0), (BASE + r.QUEUE_NOTIFY, 4, 1)]
        mmio.detach()
        assert all(e._fd < 0 for e in events)   # the ioeventfds are gone


def test_detach_leaves_nothing_on_the_bus() -> None:
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        mmio = VirtioMmio(Echo(), BASE)
        mmio.attach(intf)
        mmio.detach()
        assert m.mmio_bus.read(BASE, 4) is None
        mmio.attach(intf)                         # and it can come back at once
        assert m.mmio_bus.read(BASE, 4) == struct.pack("<I", 0x74726976)
        mmio.detach()


def test_bad_transport_arguments_are_refused() -> None:
    with pytest.raises(xi.XInterfaceError) as exc:
        VirtioMmio(Echo(), BASE, version=3)
    assert exc.value.argument == "version"
    with pytest.raises(xi.XInterfaceError) as exc:
        VirtioMmio(Echo(), BASE, doorbells="sync")  # type: ignore[arg-type]
    assert exc.value.argument == "doorbells"


def test_level_line_follows_interrupt_status() -> None:
    line = LineLog()
    levels = line.levels
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        mmio = VirtioMmio(Echo(), BASE, irq=line)
        mmio.attach(intf)
        bus = Bus(m, intf, mmio, [])
        q = QueueDriver(intf, 0x10000, 8)
        bus.init(queues=[q])
        for _ in range(2):
            q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
            bus.write(r.QUEUE_NOTIFY, 0)
        assert levels == [True]                 # asserted once, held while the status is set
        bus.write(r.INTERRUPT_ACK, 1)
        assert levels == [True, False]
        q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
        bus.write(r.QUEUE_NOTIFY, 0)
        bus.write(r.STATUS, 0)                  # a reset drops it too
        assert levels == [True, False, True, False]
        mmio.detach()
