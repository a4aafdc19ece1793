"""A disk image that boots GRUB from Debian's grub-pc-bin, built at test time.

``grub-mkimage -O i386-pc`` makes core.img (diskboot.img, then GRUB's kernel and the modules
named, with an embedded early config). The disk is boot.img in sector 0, core.img from
sector 1: boot.img loads the sector its KERNEL_SECTOR field names (offset 0x5c, 1 by
default), and diskboot.img's block list (the last 12 bytes of its sector: start 2, the
length grub-mkimage wrote) loads the rest, which is what grub-bios-setup would write for an
image embedded right after the MBR. No partition table and no filesystem: the early config
does everything.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

GRUB_DIR = Path("/usr/lib/grub/i386-pc")
KERNEL_SECTOR = 0x5C          # boot.img: the LBA of core.img's first sector (8 bytes)
BLOCKLIST = 0x200 - 12        # diskboot.img: struct grub_boot_blocklist {start, len, segment}
MARKER = "GRUB on xinterface: virtio-blk ok"
EARLY_CONFIG = f"""serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
echo "{MARKER}"
reboot
"""
MODULES = ("biosdisk", "serial", "terminal", "echo", "reboot")


def grub_disk(workdir: Path, size: int = 4 << 20) -> Path:
    """Build ``workdir/grub.img`` and return its path."""
    config = workdir / "early.cfg"
    config.write_text(EARLY_CONFIG)
    core = workdir / "core.img"
    subprocess.run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "(hd0)/boot/grub",
                    "-c", str(config), *MODULES], check=True, capture_output=True)
    boot = bytearray((GRUB_DIR / "boot.img").read_bytes())
    struct.pack_into("<Q", boot, KERNEL_SECTOR, 1)
    image = bytearray(core.read_bytes())
    sectors = (len(image) + 511) // 512
    start, length, _segment = struct.unpack_from("<QHH", image, BLOCKLIST)
    # grub-mkimage lays the block list out for this very placement; check, do not trust.
    assert (start, length) == (2, sectors - 1), (start, length, sectors)
    disk = workdir / "grub.img"
    disk.write_bytes((bytes(boot) + bytes(image)).ljust(size, b"\0"))
    return disk
