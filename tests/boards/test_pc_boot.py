"""virtio-pci on the pc board, driven by software nobody here wrote: Debian's SeaBIOS finds
our virtio-blk, boots a boot sector from it, and the boot sector reads more sectors through
SeaBIOS's own virtio driver (INT 13h)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.virtio.grub_disk import MARKER, grub_disk
from xinterface.boards.pc import Disk, attach_pc
from xinterface.delivery import Delivery
from xinterface.devices import Until
from xinterface.virtio.blk import VirtioBlk
from xinterface.virtio.pci import VirtioPci

pytestmark = needs_kvm

BIOS = Path("/usr/share/seabios/bios.bin")
SECTORS = 8


def disk_image(path: Path, boot: bytes) -> int:
    """The boot sector, then SECTORS sectors of known data; their 16-bit word sum."""
    data = bytes((i * 7 + i // 512) & 0xFF for i in range(SECTORS * 512))
    path.write_bytes((boot + data).ljust(2 << 20, b"\0"))  # under 504 KiB SeaBIOS sees 0 cylinders
    return int(sum(struct.unpack(f"<{len(data) // 2}H", data))) & 0xFFFF


@pytest.mark.parametrize("doorbells", [Delivery.SYNC, Delivery.EVENTFD])
def test_seabios_boots_a_boot_sector_from_our_virtio_blk(tmp_path: Path, guest: Assemble,
                                                         doorbells: Delivery) -> None:
    boot = guest("disk_boot", gpa=0x7C00, SECTORS=SECTORS)
    assert len(boot) == 512
    image = tmp_path / "disk.img"
    expected = disk_image(image, boot)
    console, log = io.BytesIO(), io.BytesIO()
    with xi.Machine(memory=64 << 20, irqchip=True, console=console) as m:
        m.load_firmware(BIOS)
        platform = attach_pc(m, debugcon=log, serial=io.BytesIO(),
                             disks=[Disk(str(image))], doorbells=doorbells)
        result = m.run(timeout=120)
        text = log.getvalue().decode(errors="replace")
        assert (result.reason, result.exit_code) == ("exit", 0x21), text[-3000:]
        assert console.getvalue() == f"sum={expected:04x}\n".encode()
        assert "virtio" in text.lower()
        transport = platform.virtio[0]
        assert isinstance(transport, VirtioPci) and isinstance(transport.device, VirtioBlk)
        fd = transport.device.fileno()
    with pytest.raises(OSError):
        os.fstat(fd)  # the image was closed with the machine


def test_seabios_boots_grub_from_our_virtio_blk(tmp_path: Path) -> None:
    """Debian's GRUB, loaded by Debian's SeaBIOS through our virtio-blk, prints on COM1."""
    disk = grub_disk(tmp_path)
    serial, log = io.BytesIO(), io.BytesIO()
    with xi.Machine(memory=64 << 20, irqchip=True) as m:
        m.load_firmware(BIOS)
        watch = Until(serial, MARKER.encode(), m.stop)
        attach_pc(m, debugcon=log, serial=watch, disks=[Disk(str(disk), readonly=True)])
        result = m.run(timeout=180)
        text = serial.getvalue().decode(errors="replace")
        assert watch.matched, (result, text[-2000:], log.getvalue()[-2000:])
