"""Expansion ROM images (PCI Firmware Specification 3.0, 5.1): the header firmware checks
before it runs a ROM found behind a function's ROM BAR.

SeaBIOS runs a PCI ROM image only if its PCI data structure ("PCIR") names the function's
own vendor and device IDs (``src/optionroms.c``, ``map_pcirom``) and its bytes sum to zero
(``is_valid_rom``). One ROM often drives several IDs: Debian's iPXE virtio-net ROM names
1af4:1041 (modern virtio-net) in its header and supports the transitional 1af4:1000 too.
:func:`rom_for` rewrites the header's IDs for the function that carries the ROM and keeps
the checksum, as QEMU does for the ROMs it loads by default.
"""

from __future__ import annotations

import errno
import struct

from ...errors import XInterfaceError

ROM_SIGNATURE = b"\x55\xaa"        # 5.1.1: the ROM header
PCIR_POINTER = 0x18                # 5.1.1: offset of the pointer to the PCI data structure
PCIR_SIGNATURE = b"PCIR"           # 5.1.2
PCIR_IDS = struct.Struct("<HH")    # vendor, device at PCIR + 4
# The byte that balances the checksum in ROMs built by iPXE (its romprefix's "checksum",
# right after the signature, size and 3-byte jump): where QEMU adjusts it too.
CHECKSUM_BYTE = 6


def _check(rom: bytes) -> int:
    """The PCIR offset of a well-formed ROM, else ``XInterfaceError(EINVAL)``."""
    if len(rom) < PCIR_POINTER + 2 or rom[:2] != ROM_SIGNATURE:
        raise XInterfaceError(errno.EINVAL, "not an option ROM (no 55 aa signature)",
                              argument="rom", value=len(rom))
    pcir = int.from_bytes(rom[PCIR_POINTER:PCIR_POINTER + 2], "little")
    if pcir + 8 > len(rom) or rom[pcir:pcir + 4] != PCIR_SIGNATURE:
        raise XInterfaceError(errno.EINVAL, f"option ROM has no PCI data structure at "
                              f"{pcir:#x}", argument="rom", value=len(rom))
    return pcir


def rom_ids(rom: bytes) -> tuple[int, int]:
    """(vendor, device) named by the first image's PCI data structure."""
    pcir = _check(rom)
    vendor, device = PCIR_IDS.unpack_from(rom, pcir + 4)
    return int(vendor), int(device)


def rom_for(rom: bytes, vendor: int, device: int) -> bytes:
    """``rom`` with its first image's PCIR IDs set to ``vendor:device``, its checksum kept.

    A ROM whose image does not sum to zero is returned unchanged (the firmware rejects it
    either way), as is one that already names these IDs.
    """
    pcir = _check(rom)
    if rom_ids(rom) == (vendor, device):
        return rom
    size = rom[2] * 512 or len(rom)
    if size > len(rom) or sum(rom[:size]) & 0xFF:
        return rom
    out = bytearray(rom)
    PCIR_IDS.pack_into(out, pcir + 4, vendor, device)
    out[CHECKSUM_BYTE] = (out[CHECKSUM_BYTE] - sum(out[:size])) & 0xFF
    return bytes(out)
