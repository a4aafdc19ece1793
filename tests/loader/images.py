"""Synthetic kernel images for the loader tests, written from the specifications: a bzImage
setup header (Documentation/x86/boot.rst) and an ELF64 executable with a Xen PVH note (ELF
gABI; Xen's elfnote.h), each with knobs to make it malformed."""

from __future__ import annotations

import struct

XLF_KERNEL_64 = 0x1
PAGE = 4096


def bzimage(*, version: int = 0x020F, xloadflags: int = XLF_KERNEL_64, magic: bytes = b"HdrS",
            boot_flag: int = 0xAA55, loadflags: int = 0x01, setup_sects: int = 2,
            payload: bytes = b"\x90" * 8192, init_size: int = 0x200000,
            pref_address: int = 0x1000000, initrd_addr_max: int = 0x7FFFFFFF,
            cmdline_size: int = 2047, version_string: bytes = b"6.1.0-synthetic") -> bytes:
    """A bzImage whose setup is ``setup_sects`` sectors after the boot sector."""
    setup = bytearray((setup_sects + 1) * 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])            # jmp over the header, to 0x26C
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)  # kernel_version: string at 0x300
    setup[0x300:0x300 + len(version_string) + 1] = version_string + b"\0"
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, 0x100000)       # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)       # kernel_alignment
    struct.pack_into("<B", setup, 0x234, 1)              # relocatable_kernel
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), kind) + pad(name + b"\0") + pad(desc)


def vmlinux(*, segments: list[tuple[int, bytes, int]] | None = None,
            entry: int | None = 0x200010, machine: int = EM_X86_64,
            notes: bytes | None = None, truncate: int | None = None) -> bytes:
    """An ELF64 executable: ``segments`` of (paddr, data, memsz), and a PT_NOTE holding a Xen
    PHYS32_ENTRY note for ``entry`` (None: no such note; ``notes`` replaces the note bytes)."""
    if segments is None:
        segments = [(0x200000, bytes(range(256)) * 16, 0x2000)]
    if notes is None:
        notes = note(b"GNU", 3, b"\x11" * 20)
        if entry is not None:
            notes += note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<Q", entry))
    phnum = len(segments) + 1
    ehsize, phentsize = 64, 56
    offset = ehsize + phentsize * phnum
    blobs: list[bytes] = []
    phdrs: list[bytes] = []
    for paddr, data, memsz in segments:
        vaddr = (0xFFFFFFFF80000000 + paddr) % (1 << 64)   # the kernel's high mapping
        phdrs.append(struct.pack("<IIQQQQQQ", PT_LOAD, 7, offset, vaddr, paddr, len(data),
                                 memsz, PAGE))
        blobs.append(data)
        offset += len(data)
    phdrs.append(struct.pack("<IIQQQQQQ", PT_NOTE, 4, offset, 0, 0, len(notes), len(notes), 4))
    blobs.append(notes)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)   # ELFCLASS64, little endian, v1
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry or 0, ehsize, 0, 0,
                                 ehsize, phentsize, phnum, 64, 0, 0)
    image = header + b"".join(phdrs) + b"".join(blobs)
    return image[:truncate] if truncate is not None else image
