"""Unmodified firmware as the driver: Debian's SeaBIOS for microvm finds our virtio-blk through
the DSDT's virtio-mmio device, initialises it with its own virtio drivers, boots the disk's
boot sector (tests/guests/virtio_bootsector.S), which reads the next sector through INT 13h."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.boards import attach_microvm
from xinterface.devices import Until
from xinterface.devices.interrupt import GsiLine
from xinterface.virtio import VirtioBlk, VirtioMmio

pytestmark = needs_kvm

SEABIOS = Path("/usr/share/seabios/bios-microvm.bin")
BASE, WINDOW, GSI = 0xFEB0_0000, 0x200, 16   # where QEMU's microvm puts its first transport


@pytest.mark.parametrize("doorbells", list(xi.Delivery), ids=lambda d: d.value)
def test_seabios_boots_a_virtio_blk_disk_over_virtio_mmio(guest: Assemble, tmp_path: Path,
                                                          doorbells: xi.Delivery) -> None:
    sector1 = bytes((i * 5 + 1) & 0xFF for i in range(512))
    image = tmp_path / "boot.img"
    # 1 MiB: SeaBIOS gives a disk of fewer than 16 * 63 sectors no cylinder, and refuses
    # every CHS read of it.
    image.write_bytes(guest("virtio_bootsector", gpa=0x7C00) + sector1 + bytes(2046 * 512))
    expected = sum(struct.unpack("<256H", sector1)) & 0xFFFF
    log = io.BytesIO()
    with VirtioBlk(image) as disk, xi.Machine(memory=32 << 20, irqchip=True,
                                               console=io.BytesIO()) as m:
        m.load_firmware(SEABIOS)
        watch = Until(log, b"virtio boot:", lambda: None)
        platform = attach_microvm(m, debugcon=watch, serial=io.BytesIO(),
                                  mmio_devices=[(BASE, WINDOW, GSI)])
        intf = platform.intf
        # Level-triggered, as the DSDT declares it (SeaBIOS itself polls).
        mmio = VirtioMmio(disk, BASE, irq=GsiLine(intf, GSI), doorbells=doorbells)
        mmio.attach(intf)
        # SeaBIOS polls the used ring without an exit: a POSTED doorbell needs the poller.
        result = m.run(timeout=120, poll=0.001 if doorbells is xi.Delivery.POSTED else None)
        mmio.detach()
    text = log.getvalue().decode(errors="replace")
    assert f"virtio boot: sum={expected:04x}" in text, text[-3000:]
    assert result.reason == "exit" and result.exit_code == 1
    assert disk.stats["status_0"] >= 2 and not disk.stats["status_1"]
