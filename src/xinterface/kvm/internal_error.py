"""``KVM_EXIT_INTERNAL_ERROR`` in words: what KVM could not do, where, on which bytes.

Layout (Documentation/virt/kvm/api.rst, "KVM_EXIT_INTERNAL_ERROR"; <linux/kvm.h>,
``struct kvm_run``, ``emulation_failure``): ``internal.data[ndata]`` is suberror-specific.
For ``KVM_INTERNAL_ERROR_EMULATION`` it is ABI: ``data[0]`` holds ``flags``; with
``KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`` set, the next 16 bytes hold
``insn_size`` and up to 15 bytes of the instruction KVM's emulator could not run. Words after
those are debug data whose format is not ABI, so they are shown only as numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from . import uapi

FLAG_INSTRUCTION_BYTES = uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
_INSN_WORDS = 2            # insn_size plus insn_bytes[15]: 16 bytes after flags
_MAX_INSN = 15             # the longest x86 instruction (SDM Vol. 2A, 2.3.11)
CR0_PE = 1 << 0            # SDM Vol. 3A, 2.5
EFER_LMA = 1 << 10         # SDM Vol. 3A, 2.2.1

NAMES = {
    uapi.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    uapi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    uapi.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
    uapi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}


def cpu_mode(regs: Mapping[str, int]) -> str:
    if regs.get("efer", 0) & EFER_LMA:
        return "long"
    return "protected" if regs.get("cr0", 0) & CR0_PE else "real"


def where(regs: Mapping[str, int]) -> str:
    """``CS:IP`` as the mode writes it, plus the linear address when CS has a base."""
    if "rip" not in regs:
        return "an unknown address (KVM did not give the registers)"
    mode = cpu_mode(regs)
    cs, rip, base = regs.get("cs", 0), regs["rip"], regs.get("cs_base", 0)
    width = {"real": 4, "protected": 8, "long": 16}[mode]
    ip = rip & ((1 << (4 * width)) - 1)
    text = f"CS:IP {cs:04x}:{ip:0{width}x} ({mode} mode"
    if base:
        text += f", linear {base + ip:#x}"
    return text + ")"


def instruction_bytes(data: Sequence[int]) -> bytes | None:
    """The failing instruction's bytes from an emulation failure's data, if KVM gave them."""
    if len(data) < 1 + _INSN_WORDS or not data[0] & FLAG_INSTRUCTION_BYTES:
        return None
    raw = struct.pack("<2Q", *data[1 : 1 + _INSN_WORDS])
    return raw[1 : 1 + min(raw[0], _MAX_INSN)]


def describe(suberror: int, data: Sequence[int], regs: Mapping[str, int]) -> str:
    """One line for an internal error with ``data`` (the first ``ndata`` words)."""
    if suberror == uapi.KVM_INTERNAL_ERROR_EMULATION:
        insn = instruction_bytes(data)
        shown = (f"the bytes there: {insn.hex(' ')}" if insn else
                 "KVM gave no instruction bytes")
        return (f"the guest executed an instruction KVM cannot emulate at {where(regs)}; "
                f"{shown} (KVM_EXIT_INTERNAL_ERROR, emulation failure)")
    name = NAMES.get(suberror, f"suberror {suberror}")
    words = " ".join(f"{d:#x}" for d in data)
    return (f"KVM internal error: {name} at {where(regs)} (KVM_EXIT_INTERNAL_ERROR)"
            + (f"; data {words}" if words else ""))
