"""The Linux/x86 boot protocol for a bzImage, through its 64-bit entry point.

Offsets, flags and rules from the kernel's Documentation/x86/boot.rst ("The real-mode kernel
header", "Details of header fields", "64-bit boot protocol"). The loader copies the setup
header into a zeroed ``struct boot_params`` (the zero page), fills in what a boot loader
owns, loads the protected-mode kernel at 1 MiB and enters it at +0x200 in long mode with
paging on and RSI pointing at the zero page.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from ...errors import XInterfaceError

SECTOR = 512
HEADER_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_VERSION = 0x0206          # cmdline_size and a usable initrd_addr_max
DEFAULT_SETUP_SECTS = 4       # "if this field is 0, the real value is 4"
ENTRY_64_OFFSET = 0x200       # 64-bit entry: load address of the protected-mode kernel + 0x200
TYPE_OF_LOADER_UNDEFINED = 0xFF
LOADFLAG_LOADED_HIGH = 0x01   # protected-mode code loads at 0x100000 (every bzImage)
XLF_KERNEL_64 = 0x0001        # has the legacy 64-bit entry point at 0x200
HEADER_MIN_END = 0x26C        # through init_size (protocol 2.10)

# boot_params offsets (arch/x86/include/uapi/asm/bootparam.h, boot.rst "zero page").
BP_SIZE = 4096
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_HDR = 0x1F1
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
_E820_ENTRY = struct.Struct("<QQI")

# Setup header fields: offset in the image and in boot_params, struct format.
SETUP_SECTS = (0x1F1, "B")
BOOT_FLAG_FIELD = (0x1FE, "H")
JUMP = (0x200, "H")
HEADER = (0x202, "4s")
VERSION = (0x206, "H")
KERNEL_VERSION = (0x20E, "H")
TYPE_OF_LOADER = (0x210, "B")
LOADFLAGS = (0x211, "B")
CODE32_START = (0x214, "I")
RAMDISK_IMAGE = (0x218, "I")
RAMDISK_SIZE = (0x21C, "I")
CMD_LINE_PTR = (0x228, "I")
INITRD_ADDR_MAX = (0x22C, "I")
KERNEL_ALIGNMENT = (0x230, "I")
RELOCATABLE_KERNEL = (0x234, "B")
XLOADFLAGS = (0x236, "H")
CMDLINE_SIZE = (0x238, "I")
PREF_ADDRESS = (0x258, "Q")
INIT_SIZE = (0x260, "I")


def _get(data: bytes | bytearray, field: tuple[int, str]) -> int:
    value = struct.unpack_from("<" + field[1], data, field[0])[0]
    return int(value) if not isinstance(value, bytes) else int.from_bytes(value, "little")


def _put(data: bytearray, field: tuple[int, str], value: int) -> None:
    struct.pack_into("<" + field[1], data, field[0], value)


@dataclass(frozen=True)
class SetupHeader:
    """What the loader needs of a bzImage's setup header."""

    version: int
    setup_size: int           # bytes of the real-mode part (boot sector + setup)
    header_end: int           # the header occupies image[0x1F1:header_end]
    loadflags: int
    xloadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    pref_address: int
    init_size: int
    kernel_version: str

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


def _bad(message: str, value: object = None) -> XInterfaceError:
    return XInterfaceError(errno.ENOEXEC, message, argument="kernel", value=value)


def parse_setup_header(image: bytes) -> SetupHeader:
    """Check the header the way boot.rst asks a loader to, or raise one clear error."""
    if len(image) < HEADER_MIN_END:
        raise _bad(f"kernel image of {len(image)} bytes is too short for a Linux setup header "
                   "(and is no ELF vmlinux)", len(image))
    magic = image[HEADER[0]:HEADER[0] + 4]
    if magic != HEADER_MAGIC:
        raise _bad(f"neither an ELF vmlinux nor a bzImage: no 'HdrS' magic at offset "
                   f"{HEADER[0]:#x} (found {magic!r})", magic)
    if _get(image, BOOT_FLAG_FIELD) != BOOT_FLAG:
        raise _bad(f"not a bzImage: boot_flag is {_get(image, BOOT_FLAG_FIELD):#06x}, not "
                   f"{BOOT_FLAG:#06x}")
    version = _get(image, VERSION)
    if version < MIN_VERSION:
        raise _bad(f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old: "
                   f"2.{MIN_VERSION & 0xFF:02d} or newer is needed", version)
    loadflags = _get(image, LOADFLAGS)
    if not loadflags & LOADFLAG_LOADED_HIGH:
        raise _bad("a zImage (loaded low), not a bzImage: LOADED_HIGH is clear in loadflags",
                   loadflags)
    xloadflags = _get(image, XLOADFLAGS) if version >= 0x020C else 0
    if not xloadflags & XLF_KERNEL_64:
        raise _bad(f"the kernel has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags "
                   f"{xloadflags:#x}, protocol {version >> 8}.{version & 0xFF:02d}): a 32-bit "
                   "kernel?", xloadflags)
    setup_sects = _get(image, SETUP_SECTS) or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR
    if setup_size >= len(image):
        raise _bad(f"setup_sects {setup_sects} leaves no protected-mode kernel in an image of "
                   f"{len(image)} bytes", setup_sects)
    header_end = JUMP[0] + 2 + (_get(image, JUMP) >> 8)   # the jump's 8-bit displacement
    version_ptr = _get(image, KERNEL_VERSION)
    kernel_version = ""
    if version_ptr and version_ptr + 0x200 < setup_size:
        raw = image[version_ptr + 0x200:setup_size]
        kernel_version = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return SetupHeader(
        version=version, setup_size=setup_size, header_end=header_end, loadflags=loadflags,
        xloadflags=xloadflags, initrd_addr_max=_get(image, INITRD_ADDR_MAX),
        kernel_alignment=_get(image, KERNEL_ALIGNMENT),
        relocatable=bool(_get(image, RELOCATABLE_KERNEL)),
        cmdline_size=_get(image, CMDLINE_SIZE),
        pref_address=_get(image, PREF_ADDRESS) if version >= 0x020A else 0,
        init_size=_get(image, INIT_SIZE) if version >= 0x020A else 0,
        kernel_version=kernel_version,
    )


def zero_page(image: bytes, header: SetupHeader, *, cmdline_gpa: int,
              initrd: tuple[int, int] | None, e820: list[tuple[int, int, int]]) -> bytes:
    """``struct boot_params`` for this image: its setup header, plus the loader's fields."""
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise XInterfaceError(errno.E2BIG, f"{len(e820)} memory map entries: the zero page "
                              f"holds {E820_MAX_ENTRIES_ZEROPAGE}", argument="memory",
                              value=len(e820))
    bp = bytearray(BP_SIZE)
    bp[BP_HDR:header.header_end] = image[BP_HDR:header.header_end]
    _put(bp, TYPE_OF_LOADER, TYPE_OF_LOADER_UNDEFINED)
    _put(bp, CMD_LINE_PTR, cmdline_gpa & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmdline_gpa >> 32)
    if initrd is not None:
        gpa, size = initrd
        _put(bp, RAMDISK_IMAGE, gpa & 0xFFFFFFFF)
        _put(bp, RAMDISK_SIZE, size & 0xFFFFFFFF)
        struct.pack_into("<I", bp, BP_EXT_RAMDISK_IMAGE, gpa >> 32)
        struct.pack_into("<I", bp, BP_EXT_RAMDISK_SIZE, size >> 32)
    bp[BP_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        _E820_ENTRY.pack_into(bp, BP_E820_TABLE + i * _E820_ENTRY.size, *entry)
    return bytes(bp)
