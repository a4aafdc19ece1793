"""The PVH entry of an uncompressed ``vmlinux`` (ELF): no decompressor, no real-mode setup.

Xen's HVM direct boot ABI (xen/include/public/arch-x86/hvm/start_info.h, docs/misc/pvh.pandoc),
which Linux implements with CONFIG_PVH (arch/x86/platform/pvh/): the kernel advertises a
32-bit physical entry point in an ELF note of name "Xen" and type XEN_ELFNOTE_PHYS32_ENTRY.
The loader copies the PT_LOAD segments to their physical addresses and enters in 32-bit
protected mode, paging off, flat segments, with EBX holding the physical address of a
``struct hvm_start_info`` (version 1: with a memory map) that gives the command line and the
initrd as the first module.
"""

from __future__ import annotations

import errno
import io
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from ...errors import XInterfaceError

ELF_MAGIC = b"\x7fELF"
XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_LOAD = "PT_LOAD"
PT_NOTE = "PT_NOTE"
MACHINES = ("EM_X86_64", "EM_386")

START_INFO_MAGIC = 0x336EC578      # XEN_HVM_START_MAGIC_VALUE
START_INFO_VERSION = 1             # version 1 adds memmap_paddr/memmap_entries
_START_INFO = struct.Struct("<IIIIQQQQII")      # 56 bytes
_MODLIST_ENTRY = struct.Struct("<QQQQ")         # paddr, size, cmdline_paddr, reserved
_MEMMAP_ENTRY = struct.Struct("<QQII")          # addr, size, type, reserved
_NOTE_HEADER = struct.Struct("<III")            # namesz, descsz, type (same in ELF32/64)


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class PvhImage:
    entry: int
    segments: tuple[Segment, ...]

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def _bad(message: str, value: object = None) -> XInterfaceError:
    return XInterfaceError(errno.ENOEXEC, message, argument="kernel", value=value)


def is_elf(image: bytes) -> bool:
    return image[:4] == ELF_MAGIC


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _pvh_entry(notes: bytes) -> int | None:
    """The XEN_ELFNOTE_PHYS32_ENTRY value in a PT_NOTE segment's bytes (ELF spec, "Note
    Section"; the value is 4 bytes on 32-bit kernels and 8 on 64-bit ones)."""
    pos = 0
    while pos + _NOTE_HEADER.size <= len(notes):
        namesz, descsz, kind = _NOTE_HEADER.unpack_from(notes, pos)
        name_at = pos + _NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        if desc_at + descsz > len(notes):
            return None
        name = notes[name_at:name_at + namesz].rstrip(b"\0")
        if name == XEN_NOTE_NAME and kind == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
            return int.from_bytes(notes[desc_at:desc_at + descsz], "little")
        pos = desc_at + _align4(descsz)
    return None


def parse_vmlinux(image: bytes) -> PvhImage:
    """The loadable segments and PVH entry of an ELF kernel, or one clear error."""
    try:
        elf = ELFFile(io.BytesIO(image))
        machine = elf["e_machine"]
        headers = [(seg["p_type"], seg["p_offset"], seg["p_filesz"], seg["p_paddr"],
                    seg["p_memsz"]) for seg in elf.iter_segments()]
    except Exception as exc:  # pyelftools raises many kinds on a truncated or bad file
        raise _bad(f"not a valid ELF kernel: {type(exc).__name__}: {exc}") from None
    if machine not in MACHINES:
        raise _bad(f"ELF kernel for {machine}, not x86 ({' or '.join(MACHINES)})", machine)
    segments: list[Segment] = []
    entry = None
    for kind, offset, filesz, paddr, memsz in headers:
        if kind not in (PT_LOAD, PT_NOTE):
            continue
        if offset + filesz > len(image) or (kind == PT_LOAD and filesz > memsz):
            raise _bad(f"ELF {kind} segment at file offset {offset:#x} ({filesz:#x} bytes, "
                       f"{memsz:#x} in memory) lies outside the {len(image)}-byte file",
                       offset)
        data = image[offset:offset + filesz]
        if kind == PT_NOTE:
            entry = _pvh_entry(data) if entry is None else entry
        elif memsz:
            segments.append(Segment(paddr, data, memsz))
    if entry is None:
        raise _bad("the ELF kernel has no PVH entry (no Xen XEN_ELFNOTE_PHYS32_ENTRY note): "
                   "build it with CONFIG_PVH=y, or boot its bzImage")
    if not segments:
        raise _bad("the ELF kernel has no PT_LOAD segment")
    for seg in segments:
        if seg.paddr + seg.memsz > 1 << 32:
            raise _bad(f"ELF segment at physical {seg.paddr:#x} ({seg.memsz:#x} bytes) ends "
                       "above 4 GiB, out of reach of the 32-bit PVH entry", seg.paddr)
    if not any(s.paddr <= entry < s.paddr + s.memsz for s in segments):
        raise _bad(f"the PVH entry {entry:#x} lies in no loaded segment", entry)
    return PvhImage(entry, tuple(segments))


def start_info_size(modules: int, memmap_entries: int) -> int:
    return (_START_INFO.size + _MODLIST_ENTRY.size * modules
            + _MEMMAP_ENTRY.size * memmap_entries)


def start_info(gpa: int, *, cmdline_gpa: int, initrd: tuple[int, int] | None,
               e820: list[tuple[int, int, int]]) -> bytes:
    """``struct hvm_start_info`` at ``gpa``, then its module list and memory map."""
    modlist_gpa = gpa + _START_INFO.size
    modules = [initrd] if initrd is not None else []
    memmap_gpa = modlist_gpa + _MODLIST_ENTRY.size * len(modules)
    head = _START_INFO.pack(START_INFO_MAGIC, START_INFO_VERSION, 0, len(modules),
                            modlist_gpa if modules else 0, cmdline_gpa, 0, memmap_gpa,
                            len(e820), 0)
    mods = b"".join(_MODLIST_ENTRY.pack(mgpa, size, 0, 0) for mgpa, size in modules)
    memmap = b"".join(_MEMMAP_ENTRY.pack(addr, size, kind, 0) for addr, size, kind in e820)
    return head + mods + memmap
