"""What GDB sees of a vCPU: the architecture by its mode, the register list and the target
description (GDB manual, "Target Descriptions", "i386 Features").

GDB's i386 and amd64 code require the ``org.gnu.gdb.i386.core`` feature with the general
registers, eflags, the six segment selectors and the x87 registers, in that order; the x87
registers are shown unavailable (``x``), as this stub does not read the FPU. A feature of our
own adds cr0, cr2, cr3, cr4 and efer. A vCPU with CR0.PE clear is described as ``i8086``,
which GDB disassembles as 16-bit code; EFER.LMA with a 64-bit CS is ``i386:x86-64``.
"""

from __future__ import annotations

from typing import NamedTuple

from ..kvm import uapi

CR0_PE = 1
EFER_LMA = 1 << 10

_X87 = [(f"st{i}", 80, "i387_ext") for i in range(8)] + [
    (name, 32, "int") for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg",
                                   "fooff", "fop")]
_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_SYSTEM = ("cr0", "cr2", "cr3", "cr4", "efer")


class Register(NamedTuple):
    name: str
    bits: int
    type: str
    feature: str
    source: str  # "regs:NAME", "sregs:NAME", "seg:NAME" or "none" (unavailable)


def _registers(wide: bool) -> tuple[Register, ...]:
    core = "org.gnu.gdb.i386.core"
    out: list[Register] = []
    if wide:
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                 *(f"r{i}" for i in range(8, 16)))
        for name in names:
            kind = "data_ptr" if name in ("rbp", "rsp") else "int64"
            out.append(Register(name, 64, kind, core, f"regs:{name}"))
        out.append(Register("rip", 64, "code_ptr", core, "regs:rip"))
    else:
        for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"):
            kind = "data_ptr" if name in ("esp", "ebp") else "int32"
            out.append(Register(name, 32, kind, core, "regs:r" + name[1:]))
        out.append(Register("eip", 32, "code_ptr", core, "regs:rip"))
    out.append(Register("eflags", 32, "int32", core, "regs:rflags"))
    out += [Register(s, 32, "int32", core, f"seg:{s}") for s in _SEGMENTS]
    out += [Register(n, b, t, core, "none") for n, b, t in _X87]
    out += [Register(n, 64, "int64", "org.xinterface.system", f"sregs:{n}") for n in _SYSTEM]
    return tuple(out)


class Arch(NamedTuple):
    """One of the three descriptions: ``name`` is GDB's architecture name."""

    name: str
    registers: tuple[Register, ...]

    def xml(self) -> bytes:
        features: dict[str, list[str]] = {}
        for number, reg in enumerate(self.registers):
            features.setdefault(reg.feature, []).append(
                f'<reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                f'regnum="{number}"/>')
        body = "".join(f'<feature name="{name}">{"".join(regs)}</feature>'
                       for name, regs in features.items())
        return (f'<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
                f"<target><architecture>{self.name}</architecture><osabi>none</osabi>{body}"
                f"</target>").encode()

    def number(self, name: str) -> int:
        """GDB's number of the register called ``name``."""
        return [r.name for r in self.registers].index(name)


I8086 = Arch("i8086", _registers(False))
I386 = Arch("i386", _registers(False))
X86_64 = Arch("i386:x86-64", _registers(True))


ARCHES = {arch.name: arch for arch in (I8086, I386, X86_64)}


def arch_of(sregs: uapi.kvm_sregs) -> Arch:
    """The description that fits the vCPU's mode now."""
    if not sregs.cr0 & CR0_PE:
        return I8086
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return X86_64
    return I386


def read(reg: Register, regs: uapi.kvm_regs, sregs: uapi.kvm_sregs) -> bytes | None:
    """The register's bytes as GDB wants them (little-endian), None when unavailable."""
    kind, _, name = reg.source.partition(":")
    if kind == "regs":
        value = int(getattr(regs, name))
    elif kind == "seg":
        value = int(getattr(sregs, name).selector)
    elif kind == "sregs":
        value = int(getattr(sregs, name))
    else:
        return None
    return (value & ((1 << reg.bits) - 1)).to_bytes(reg.bits // 8, "little")


def write(reg: Register, data: bytes, regs: uapi.kvm_regs, sregs: uapi.kvm_sregs) -> bool:
    """Store GDB's bytes for ``reg`` into ``regs``/``sregs``; False for a register this stub
    keeps read-only (segments: their hidden parts would have to be loaded too; x87)."""
    kind, _, name = reg.source.partition(":")
    value = int.from_bytes(data[: reg.bits // 8], "little")
    if kind == "regs":
        if reg.bits == 32:  # a 32-bit view keeps the upper half of the 64-bit register
            value |= int(getattr(regs, name)) & ~0xFFFFFFFF
        setattr(regs, name, value)
        return True
    if kind == "sregs":
        setattr(sregs, name, value)
        return True
    return False
