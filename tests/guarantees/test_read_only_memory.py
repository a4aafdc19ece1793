"""Read-only memory (the ROM): nothing the guest or the API does writes it.

docs/guarantees.md; each test reproduced a defect before its fix."""

from __future__ import annotations

import errno
import io
import struct

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.guarantees.helpers import (
    PIO,
    ROM_BASE,
    ROM_SIZE,
    open_fds,
)
from tests.virtio.helpers import BUF, Echo, rig
from xinterface.devices import fw_cfg
from xinterface.virtio import Status

pytestmark = needs_kvm


# --- read-only memory: the ROM -------------------------------------------------------------------


def test_fw_cfg_dma_never_writes_the_rom(guest: Assemble) -> None:
    table, report, buf = 0x8000, 0x5F0, 0x9000
    select_read = (fw_cfg.FW_CFG_SIGNATURE << 16) | fw_cfg.DMA_CTL_SELECT | fw_cfg.DMA_CTL_READ
    in_rom = ROM_BASE + 0x1000  # a descriptor the firmware image holds
    image = bytearray(b"\xa5" * ROM_SIZE)
    image[0x1000 : 0x1010] = struct.pack(">IIQ", select_read, 4, buf)
    with xi.Machine(memory=2 << 20, console=io.BytesIO()) as m:
        m.load_firmware(bytes(image))
        m.load_flat(guest("fw_cfg_dma", TABLE=table, REPORT=report), mode="protected")
        intf = xi.bind(m)
        device = fw_cfg.FwCfg()
        device.attach(intf)
        intf.copy_to(0xA000, struct.pack(">IIQ", select_read, 4, ROM_BASE))  # target: ROM
        intf.copy_to(table, struct.pack("<3I", 0xA000, in_rom, 0xFFFFFFFF))
        reports: list[int] = []
        intf.ioevent(report, 4, PIO, signal=lambda ev, p: reports.append(
            int.from_bytes(p, "big")))
        assert m.run(timeout=60).reason == "hlt"
        assert intf.copy_from(ROM_BASE, ROM_SIZE) == bytes(image)  # untouched
        # The transfer into the ROM failed: the error bit. The descriptor in the ROM was
        # carried out (its target is RAM) but its status could not be written back.
        assert reports == [fw_cfg.DMA_CTL_ERROR, select_read]
        assert intf.copy_from(buf, 4) == b"QEMU"


def test_copy_to_read_only_memory_is_efault_and_copies_nothing() -> None:
    with xi.Machine(memory=2 << 20) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        intf = xi.bind(m)
        for gpa, length in [(ROM_BASE, 1), (ROM_BASE + 0x100, 0x1000), (ROM_BASE, ROM_SIZE)]:
            with pytest.raises(xi.XInterfaceError) as info:
                intf.copy_to(gpa, b"x" * length)
            assert info.value.errno == errno.EFAULT
            assert "read-only" in str(info.value)
        assert intf.copy_from(ROM_BASE, ROM_SIZE) == b"\xa5" * ROM_SIZE
        intf.copy_to(0xE0000, b"seen")  # the alias below 1 MiB is RAM, shared with the image
        with intf.vmap(ROM_BASE, 16) as rom:
            assert rom.addr.readonly
            assert bytes(rom.addr) == b"\xa5" * 16


def test_virtio_never_writes_the_rom() -> None:
    # The views of the ROM are read-only: a device-writable buffer or a used ring there is a
    # bad descriptor (DEVICE_NEEDS_RESET), never a write into the ROM nor a crash.
    with rig(memory=2 << 20) as r:
        r.machine.load_firmware(b"\xa5" * ROM_SIZE)  # punches RAM the rings' vmaps still view
        r.intf.copy_to(BUF, b"ping")
        r.queue.post([(BUF, 4, False), (ROM_BASE, 16, True)])
        r.device.notify(0)
        assert r.device.status & Status.DEVICE_NEEDS_RESET
        assert r.device.error is not None and "read-only" in r.device.error
        assert r.intf.copy_from(ROM_BASE, ROM_SIZE) == b"\xa5" * ROM_SIZE
    with xi.Machine(memory=2 << 20) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        dev = Echo(8)
        dev.connect(xi.bind(m), lambda kind, queue=None: None)
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        dev.set_driver_features(1, 1)
        dev.set_status(dev.status | Status.FEATURES_OK)
        q = dev.queues[0]
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 8, 0x10000, 0x11000, ROM_BASE
        dev.set_queue_ready(0, True)
        assert not q.ready
        assert dev.error is not None and "read-only" in dev.error
        dev.disconnect()


def test_load_firmware_while_a_vmap_views_the_ram_it_punches() -> None:
    xi.Machine(memory=1 << 20).close()
    fds = open_fds()
    with xi.Machine(memory=2 << 20) as m:
        intf = xi.bind(m)
        ram = intf.vmap(0x10000, 16)  # views the region that the alias below 1 MiB splits
        m.load_firmware(b"\xa5" * ROM_SIZE)
        ram.addr[:4] = b"seen"  # the old mapping and the guest's share the memfd's pages
        assert intf.copy_from(0x10000, 4) == b"seen"
        assert intf.copy_from(0xE0000, 4) == b"\xa5" * 4
    assert open_fds() == fds  # the retired mapping was unmapped at close
