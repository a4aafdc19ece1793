"""What ``xinterface run`` accepts as a guest: a GNU as source, an ELF executable, or a flat
binary; and the CPU mode it starts in, read from the image where the image says it.

- A source (``.S`` or ``.s``) says its mode with its first ``.code16``/``.code32``/``.code64``
  directive; without one, ``as --32`` assembles 32-bit code.
- An ELF's class (``EI_CLASS``, System V ABI, "ELF Identification") gives 64-bit code (long
  mode) or 32-bit code (protected mode, or real mode when asked: ``.code16`` assembles into
  ELF32 too). Its ``PT_LOAD`` segments are placed at their physical addresses.
- A flat binary says nothing: real mode unless ``--mode`` says otherwise.

Anything that cannot be a guest (an empty file, a text file, an ELF for another machine) is
refused with one line, and so is a ``--mode`` the image contradicts.
"""

from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple

# Paths are os.PathLike here, not pathlib: `xinterface run` starts faster without pathlib.
PathArg = str | os.PathLike[str]

DEFAULT_GPA = 0x1000
REAL_MODE_LIMIT = 0x10000  # segment bases 0: real mode reaches the first 64 KiB
SOURCE_SUFFIXES = (".S", ".s")
MODE_OF_BITS = {16: "real", 32: "protected", 64: "long"}

_CODE_DIRECTIVE = re.compile(r"^\s*\.code(16gcc|16|32|64)\b")

# ELF (System V ABI, chapter 4): identification, header and program header layouts.
ELF_MAGIC = b"\x7fELF"
EI_CLASS, EI_DATA = 4, 5
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
_EHDR = {ELFCLASS32: struct.Struct("<HHIIIIIHHHHHH"), ELFCLASS64: struct.Struct("<HHIQQQIHHHHHH")}
_PHDR = {ELFCLASS32: struct.Struct("<IIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQQQ")}
_IDENT_SIZE = 16


class ImageError(Exception):
    """The image cannot run as given; the message says why in one line (an assembler's
    messages follow on the lines after it, as the assembler printed them)."""


class GuestImage(NamedTuple):
    data: bytes
    gpa: int
    mode: str
    kind: str  # "source", "elf" or "binary"
    entry: int | None = None  # where the vCPUs start when not at the first byte (an ELF's)


def source_mode(text: str) -> str | None:
    """The mode of a GNU as source's first ``.codeNN`` directive, or None."""
    for line in text.splitlines():
        for statement in line.split("#", 1)[0].split(";"):
            match = _CODE_DIRECTIVE.match(statement)
            if match:
                return MODE_OF_BITS[16 if match.group(1).startswith("16") else
                                    int(match.group(1))]
    return None


def looks_like_text(data: bytes) -> bool:
    """UTF-8 with nothing but printable characters and whitespace: no machine code is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text)


def load_image(path: PathArg, *, gpa: int | None, mode: str | None, memory: int) -> GuestImage:
    """Read ``path`` as a guest for ``memory`` bytes of RAM; ``gpa``/``mode`` None: not given."""
    if os.path.splitext(path)[1] in SOURCE_SUFFIXES:
        image = _from_source(path, gpa, mode)
    else:
        size = os.stat(path).st_size
        if size > memory:  # before reading it all: an image may be any file at all
            raise ImageError(f"{path} is {size} bytes, more than the guest's RAM ({memory:#x} "
                             "bytes): raise --memory")
        with open(path, "rb") as file:
            data = file.read()
        if not data:
            raise ImageError(f"{path} is empty: there is no guest code to run")
        if data.startswith(ELF_MAGIC):
            image = _from_elf(path, data, gpa, mode, memory)
        elif looks_like_text(data):
            raise ImageError(f"{path} is text, not a guest binary; a GNU as source must end "
                             "in .S or .s to be assembled")
        else:
            image = GuestImage(data, DEFAULT_GPA if gpa is None else gpa, mode or "real",
                               "binary")
    _check_fits(path, image, memory)
    return image


def _from_source(path: PathArg, gpa: int | None, mode: str | None) -> GuestImage:
    from ..loader import AssemblerError, assemble

    with open(path, errors="replace") as file:
        said = source_mode(file.read())
    if said is None:
        # as --32 assembles 32-bit code, as --64 64-bit code: never 16-bit code.
        if mode == "real":
            raise ImageError(f"{path} has no .code16 directive, so it assembles as 32-bit "
                             "code, which cannot run in real mode: add .code16 at its top")
        said = mode or "protected"
    elif mode is not None and mode != said:
        raise ImageError(f"{path} is {said}-mode code (its first .code directive) but --mode "
                         f"is {mode}: drop --mode, or change the directive")
    at = DEFAULT_GPA if gpa is None else gpa
    try:
        data = assemble(path, gpa=at, bits=64 if said == "long" else 32)
    except AssemblerError as exc:
        raise ImageError(str(exc)) from None
    if not data:
        raise ImageError(f"{path} assembles to no code")
    return GuestImage(data, at, said, "source")


def _from_elf(path: PathArg, data: bytes, gpa: int | None, mode: str | None,
              memory: int) -> GuestImage:
    def bad(why: str) -> ImageError:
        return ImageError(f"{path} is not an ELF executable xinterface can run: {why}")

    if len(data) < _IDENT_SIZE or data[EI_CLASS] not in _EHDR:
        raise bad("unknown ELF class")
    elf_class = data[EI_CLASS]
    if data[EI_DATA] != ELFDATA2LSB:
        raise bad("big-endian")
    ehdr = _EHDR[elf_class]
    if len(data) < _IDENT_SIZE + ehdr.size:
        raise bad("truncated header")
    e_type, machine, _, entry, phoff, _, _, _, phentsize, phnum, *_ = ehdr.unpack_from(
        data, _IDENT_SIZE)
    if machine not in (EM_386, EM_X86_64):
        raise bad(f"built for machine {machine}, not x86 (EM_386 or EM_X86_64)")
    if e_type != ET_EXEC:
        raise bad(f"type {e_type}, not an executable (ET_EXEC): link it first")
    phdr = _PHDR[elf_class]
    if phentsize < phdr.size or phoff + phnum * phentsize > len(data):
        raise bad("program headers outside the file")
    segments: list[tuple[int, bytes, int]] = []  # (paddr, file bytes, memsz)
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if elf_class == ELFCLASS32:
            p_type, offset, _, paddr, filesz, memsz, _, _ = fields
        else:
            p_type, _, offset, _, paddr, filesz, memsz, _ = fields
        if p_type != PT_LOAD or memsz == 0:
            continue
        if offset + filesz > len(data) or filesz > memsz:
            raise bad(f"segment {i} lies outside the file")
        segments.append((paddr, data[offset : offset + filesz], memsz))
    if not segments:
        raise bad("no loadable segment")
    start = min(s[0] for s in segments)
    end = max(s[0] + s[2] for s in segments)
    if end - start > memory:
        raise ImageError(f"{path} spans {end - start:#x} bytes from {start:#x}, more than "
                         f"the guest's {memory:#x} bytes of RAM: raise --memory")
    # An ordinary link (ld -Ttext=ADDR) puts the ELF and program headers in the first load
    # segment below the code: the vCPUs start at e_entry, which must lie in the image.
    if not start <= entry < end:
        raise ImageError(f"{path} starts at {entry:#x}, outside its segments "
                         f"({start:#x}-{end:#x})")
    if gpa is not None and gpa != start:
        raise ImageError(f"{path} is an ELF linked at {start:#x}: it loads there, not at "
                         f"--gpa {gpa:#x}; drop --gpa")
    flat = bytearray(end - start)
    for paddr, content, _ in segments:
        flat[paddr - start : paddr - start + len(content)] = content
    said = "long" if elf_class == ELFCLASS64 else "protected"
    allowed = ("long",) if said == "long" else ("protected", "real")
    if mode is not None and mode not in allowed:
        raise ImageError(f"{path} is ELF{32 if said != 'long' else 64} ({said}-mode code) "
                         f"but --mode is {mode}: drop --mode")
    return GuestImage(bytes(flat), start, mode or said, "elf",
                      entry if entry != start else None)


def _check_fits(path: PathArg, image: GuestImage, memory: int) -> None:
    end = image.gpa + len(image.data)
    if image.mode == "real" and end > REAL_MODE_LIMIT:
        raise ImageError(
            f"{path}: {len(image.data)} bytes at {image.gpa:#x} end at {end:#x}, past the "
            f"64 KiB that real mode reaches with segment bases 0; use --mode protected or "
            f"long (with .code32 or .code64), or a lower --gpa")
    if end > memory:
        raise ImageError(f"{path}: {len(image.data)} bytes at {image.gpa:#x} end at {end:#x}, "
                         f"past the guest's RAM ({memory:#x} bytes): raise --memory")
