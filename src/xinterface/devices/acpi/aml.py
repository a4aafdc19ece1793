"""A small AML (ACPI Machine Language) encoder: the terms a board's DSDT needs.

Every function returns the encoded bytes of one term, so a table is built by nesting calls::

    device("VR00", [
        name("_HID", string("LNRO0005")),
        name("_UID", integer(0)),
        name("_CRS", resource_template([memory32_fixed(0xFEB00000, 0x200), interrupt([16])])),
    ])

Section numbers are those of the ACPI 6.5 specification: chapter 20 ("ACPI Machine Language
Specification") for the grammar, section 6.4 ("Resource Data Types for ACPI") for the
descriptors inside a ResourceTemplate. The encodings chosen are those iasl emits for the same
ASL (smallest integer prefix, shortest PkgLength), so a disassembly compiles back byte for byte.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Iterable

from ...errors import XInterfaceError

# Data objects (20.2.3).
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E

# Name objects (20.2.2).
ROOT_CHAR = 0x5C            # '\'
PARENT_PREFIX_CHAR = 0x5E   # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00

# Named objects and statements (20.2.5).
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
RETURN_OP = 0xA4
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82            # after EXT_OP_PREFIX

# PkgLength (20.2.4): one byte holds up to 63; else bits 7-6 of the lead byte count the
# following bytes (1-3), its bits 3-0 are the low nibble and each following byte 8 more bits.
_PKG_ONE_BYTE_MAX = 0x3F
_PKG_MAX = (1 << 28) - 1

# ResourceTemplate descriptors (6.4). Small items: tag = name << 3 | length (6.4.2);
# large items: tag = 0x80 | name, then a 16-bit length of what follows (6.4.3).
_SMALL_IRQ = 0x04           # 6.4.2.1 IRQ Descriptor
_SMALL_IO = 0x08            # 6.4.2.5 I/O Port Descriptor
_SMALL_END_TAG = 0x0F       # 6.4.2.9 End Tag
_LARGE_MEMORY32_FIXED = 0x06  # 6.4.3.4 32-Bit Fixed Memory Range Descriptor
_LARGE_EXTENDED_IRQ = 0x09    # 6.4.3.6 Extended Interrupt Descriptor
_LARGE_ITEM = 0x80

# Extended Interrupt Descriptor flags byte (6.4.3.6, Table 6.247).
IRQ_CONSUMER = 1 << 0       # ResourceConsumer (else ResourceProducer)
IRQ_EDGE = 1 << 1           # Edge (else Level)
IRQ_ACTIVE_LOW = 1 << 2     # ActiveLow (else ActiveHigh)
IRQ_SHARED = 1 << 3         # Shared (else Exclusive)
IRQ_WAKE = 1 << 4           # ExclusiveAndWake / SharedAndWake

_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}")
_EISAID = re.compile(r"[A-Z]{3}[0-9A-F]{4}")


def _invalid(argument: str, value: object, why: str) -> XInterfaceError:
    return XInterfaceError(errno.EINVAL, f"AML {argument} {value!r}: {why}",
                           argument=argument, value=value)


def pkg_length(body: int) -> bytes:
    """The PkgLength of a package whose contents after the PkgLength are ``body`` bytes; the
    encoded length counts the PkgLength bytes themselves (20.2.4)."""
    if body < 0:
        raise _invalid("body", body, "negative length")
    if body + 1 <= _PKG_ONE_BYTE_MAX:
        return bytes([body + 1])
    for extra in (1, 2, 3):
        total = body + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = extra << 6 | total & 0x0F
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise _invalid("body", body, f"longer than PkgLength's {_PKG_MAX} bytes")


def _package(opcode: bytes, contents: bytes) -> bytes:
    return opcode + pkg_length(len(contents)) + contents


def name_seg(seg: str) -> bytes:
    """A NameSeg: 1-4 characters, padded with '_' to four as ASL does (20.2.2)."""
    if not _NAME_SEG.fullmatch(seg):
        raise _invalid("name", seg, "a NameSeg is 1-4 of A-Z, 0-9, '_', not starting with a digit")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """A NameString: optional root ('\\') or parent ('^'...) prefix, then dot-separated
    NameSegs (20.2.2). ``"\\"`` alone is the root scope; ``""`` is the NullName."""
    prefix = b""
    rest = path
    if rest.startswith("\\"):
        prefix, rest = bytes([ROOT_CHAR]), rest[1:]
    else:
        while rest.startswith("^"):
            prefix += bytes([PARENT_PREFIX_CHAR])
            rest = rest[1:]
    if not rest:
        return prefix + bytes([NULL_NAME])
    segs = [name_seg(s) for s in rest.split(".")]
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 0xFF:
        raise _invalid("name", path, "more than 255 NameSegs")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """An integer constant in the shortest form: Zero, One, Ones for 2**64-1 (our DSDTs have
    64-bit integers, revision 2), or Byte/Word/DWord/QWord (20.2.3), as iasl encodes it."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if 0 <= value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise _invalid("integer", value, "not in 0..2**64-1")


def ones() -> bytes:
    """The Ones constant: all bits set in the table's integer width (20.2.3)."""
    return bytes([ONES_OP])


def string(text: str) -> bytes:
    """A String constant: ASCII 0x01-0x7F, NUL-terminated (20.2.3)."""
    if not all(0 < ord(ch) <= 0x7F for ch in text):
        raise _invalid("string", text, "AML strings hold ASCII 0x01-0x7F")
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def buffer(data: bytes) -> bytes:
    """DefBuffer: PkgLength, the size as an integer term, the bytes (20.2.5.4)."""
    return _package(bytes([BUFFER_OP]), integer(len(data)) + data)


def package(elements: Iterable[bytes]) -> bytes:
    """DefPackage of already-encoded data objects (20.2.5.4); at most 255 elements."""
    items = list(elements)
    if len(items) > 0xFF:
        raise _invalid("package", len(items), "DefPackage holds at most 255 elements")
    return _package(bytes([PACKAGE_OP]), bytes([len(items)]) + b"".join(items))


def name(path: str, value: bytes) -> bytes:
    """DefName: bind ``path`` to an encoded data object (20.2.5.1)."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, terms: Iterable[bytes]) -> bytes:
    """DefScope (20.2.5.1)."""
    return _package(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, terms: Iterable[bytes]) -> bytes:
    """DefDevice (20.2.5.2)."""
    return _package(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path) + b"".join(terms))


def method(path: str, terms: Iterable[bytes], *, args: int = 0, serialized: bool = False,
           sync_level: int = 0) -> bytes:
    """DefMethod; MethodFlags: bits 2-0 ArgCount, bit 3 Serialized, bits 7-4 SyncLevel
    (20.2.5.2)."""
    if not 0 <= args <= 7:
        raise _invalid("args", args, "a method takes 0-7 arguments")
    if not 0 <= sync_level <= 15:
        raise _invalid("sync_level", sync_level, "SyncLevel is 0-15")
    flags = args | (1 << 3 if serialized else 0) | sync_level << 4
    return _package(bytes([METHOD_OP]), name_string(path) + bytes([flags]) + b"".join(terms))


def return_(value: bytes) -> bytes:
    """DefReturn of an encoded term (20.2.5.3)."""
    return bytes([RETURN_OP]) + value


def eisaid(ident: str) -> int:
    """The EISA ID ``"PNP0501"`` as the 32-bit integer ASL's EisaId() yields: three letters
    compressed to 5 bits each (A=1) and four hex digits, stored big-endian (6.1.5, _HID)."""
    if not _EISAID.fullmatch(ident):
        raise _invalid("eisaid", ident, "an EISA ID is three letters A-Z and four hex digits")
    vendor = 0
    for ch in ident[:3]:
        vendor = vendor << 5 | (ord(ch) - ord("A") + 1)
    raw = vendor.to_bytes(2, "big") + int(ident[3:], 16).to_bytes(2, "big")
    return int.from_bytes(raw, "little")


def eisaid_term(ident: str) -> bytes:
    """EisaId() as a DWordConst, as iasl encodes it (and SeaBIOS matches it, prefix included)."""
    return bytes([DWORD_PREFIX]) + struct.pack("<I", eisaid(ident))


# --- ResourceTemplate ---------------------------------------------------------------------------

def _large(item: int, data: bytes) -> bytes:
    return bytes([_LARGE_ITEM | item]) + struct.pack("<H", len(data)) + data


def _small(item: int, data: bytes) -> bytes:
    return bytes([item << 3 | len(data)]) + data


def _check_u32(argument: str, value: int) -> None:
    if not 0 <= value < 1 << 32:
        raise _invalid(argument, value, "not a 32-bit value")


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite|ReadOnly, base, length): 6.4.3.4."""
    _check_u32("base", base)
    _check_u32("length", length)
    return _large(_LARGE_MEMORY32_FIXED, struct.pack("<BII", int(writable), base, length))


def interrupt(gsis: Iterable[int], *, consumer: bool = True, edge: bool = False,
              active_low: bool = False, shared: bool = False, wake: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {gsi, ...} by default:
    the Extended Interrupt Descriptor, 6.4.3.6. Up to 255 interrupt numbers (32-bit)."""
    numbers = list(gsis)
    if not 1 <= len(numbers) <= 0xFF:
        raise _invalid("gsis", numbers, "an Interrupt descriptor lists 1-255 interrupts")
    for n in numbers:
        _check_u32("gsis", n)
    flags = ((IRQ_CONSUMER if consumer else 0) | (IRQ_EDGE if edge else 0)
             | (IRQ_ACTIVE_LOW if active_low else 0) | (IRQ_SHARED if shared else 0)
             | (IRQ_WAKE if wake else 0))
    body = bytes([flags, len(numbers)]) + b"".join(struct.pack("<I", n) for n in numbers)
    return _large(_LARGE_EXTENDED_IRQ, body)


def io(minimum: int, maximum: int, alignment: int, length: int, *,
       decode16: bool = True) -> bytes:
    """IO (Decode16|Decode10, min, max, alignment, length): the I/O Port Descriptor, 6.4.2.5."""
    for argument, value, limit in (("minimum", minimum, 1 << 16), ("maximum", maximum, 1 << 16),
                                   ("alignment", alignment, 1 << 8), ("length", length, 1 << 8)):
        if not 0 <= value < limit:
            raise _invalid(argument, value, f"not below {limit:#x}")
    return _small(_SMALL_IO, struct.pack("<BHHBB", int(decode16), minimum, maximum,
                                         alignment, length))


def irq_no_flags(irqs: Iterable[int]) -> bytes:
    """IRQNoFlags () {irq, ...}: the 2-byte IRQ Descriptor (edge, active-high, exclusive),
    a mask of ISA IRQs 0-15, 6.4.2.1."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise _invalid("irqs", irq, "an IRQ descriptor names ISA IRQs 0-15")
        mask |= 1 << irq
    return _small(_SMALL_IRQ, struct.pack("<H", mask))


def end_tag(descriptors: bytes, *, checksum: bool = False) -> bytes:
    """The End Tag (6.4.2.9). Its checksum byte makes the whole template sum to zero; zero
    means "treat as valid", which is what iasl writes, so that is the default."""
    tag = bytes([_SMALL_END_TAG << 3 | 1])
    if not checksum:
        return tag + b"\0"
    return tag + bytes([-(sum(descriptors) + tag[0]) & 0xFF])


def resource_template(descriptors: Iterable[bytes], *, checksum: bool = False) -> bytes:
    """ResourceTemplate () {...}: a Buffer of the descriptors and the End Tag (19.6.117)."""
    data = b"".join(descriptors)
    return buffer(data + end_tag(data, checksum=checksum))
