"""x86 control-register bits, descriptors and segment states the loaders program.

Bit positions from the Intel SDM, Vol. 3A, 2.5 (control registers) and 3.4.5 (descriptors).
"""

from __future__ import annotations

from ..kvm import uapi

CR0_PE = 1 << 0   # protection enable
CR0_ET = 1 << 4   # extension type: always 1 on anything after the 386
CR0_NW = 1 << 29  # not write-through (set with CD at reset)
CR0_CD = 1 << 30  # cache disable (set at reset: SDM vol. 3, 9.1.1)
CR0_PG = 1 << 31  # paging
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# Segment types (SDM 3.4.5.1): execute/read code, accessed; read/write data, accessed.
SEG_TYPE_CODE = 0xB
SEG_TYPE_DATA = 0x3

# Selectors of the loader's GDT (see flat.GDT_ENTRIES).
SEL_CODE32 = 0x08
SEL_DATA = 0x10
SEL_CODE64 = 0x18

RFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1


def segment(selector: int, *, code: bool, bits: int) -> uapi.kvm_segment:
    """A flat segment, base 0: 64 KiB in real mode, 4 GiB with 32 and 64 bits."""
    seg = uapi.kvm_segment()
    seg.base = 0
    seg.selector = selector
    seg.type = SEG_TYPE_CODE if code else SEG_TYPE_DATA
    seg.present = 1
    seg.s = 1
    if bits == 16:
        seg.limit = 0xFFFF
    else:
        seg.limit = 0xFFFFFFFF
        seg.g = 1
        seg.db = int(bits == 32 or not code)
        seg.l = int(bits == 64 and code)
    return seg


def descriptor(seg: uapi.kvm_segment) -> int:
    """The 8-byte GDT descriptor that loads as ``seg`` (SDM Figure 3-8)."""
    limit = seg.limit >> 12 if seg.g else seg.limit
    access = seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7)
    flags = seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3)
    return int(
        (limit & 0xFFFF)
        | (seg.base & 0xFFFFFF) << 16
        | access << 40
        | ((limit >> 16) & 0xF) << 48
        | flags << 52
        | ((seg.base >> 24) & 0xFF) << 56
    )
