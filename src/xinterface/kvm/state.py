"""A vCPU's and a VM's architectural state as KVM hands it out, and back.

Each piece is one ``KVM_GET_*``/``KVM_SET_*`` pair over one fixed-size structure, kept as its
raw bytes (the kernel's layout, checked against ``<linux/kvm.h>`` by tests/kvm/test_uapi.py).
The restore order follows what each setter depends on (Documentation/virt/kvm/api.rst):
special registers before the LAPIC (``apic_base`` enables it) and before the MSRs (EFER),
the LAPIC before the vCPU events (a pending interrupt is the LAPIC's), the MP state last
but the events, so an AP that was waiting for SIPI stays waiting.
"""

from __future__ import annotations

import ctypes
import errno
from typing import NamedTuple

from ..errors import XInterfaceError
from . import uapi
from .vcpufd import VcpuFd
from .vmfd import VmFd


class Piece(NamedTuple):
    """One state structure: its name in a snapshot, its getter and setter, its type."""

    name: str
    get: int
    set: int
    ctype: type[ctypes.Structure]


# In restore order (see the module docstring).
VCPU_PIECES: tuple[Piece, ...] = (
    Piece("sregs", uapi.KVM_GET_SREGS, uapi.KVM_SET_SREGS, uapi.kvm_sregs),
    Piece("regs", uapi.KVM_GET_REGS, uapi.KVM_SET_REGS, uapi.kvm_regs),
    Piece("xsave", uapi.KVM_GET_XSAVE, uapi.KVM_SET_XSAVE, uapi.kvm_xsave),
    Piece("xcrs", uapi.KVM_GET_XCRS, uapi.KVM_SET_XCRS, uapi.kvm_xcrs),
    Piece("lapic", uapi.KVM_GET_LAPIC, uapi.KVM_SET_LAPIC, uapi.kvm_lapic_state),
    Piece("debugregs", uapi.KVM_GET_DEBUGREGS, uapi.KVM_SET_DEBUGREGS, uapi.kvm_debugregs),
    Piece("mp_state", uapi.KVM_GET_MP_STATE, uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state),
    Piece("vcpu_events", uapi.KVM_GET_VCPU_EVENTS, uapi.KVM_SET_VCPU_EVENTS,
          uapi.kvm_vcpu_events),
)
# Without the in-kernel irqchip there is no LAPIC to save (KVM_GET_LAPIC fails with ENXIO).
NEEDS_IRQCHIP = frozenset({"lapic"})
# The FPU as the legacy area, for a host without XSAVE (KVM_CAP_XSAVE 0).
FPU = Piece("fpu", uapi.KVM_GET_FPU, uapi.KVM_SET_FPU, uapi.kvm_fpu)

# VM-wide, with the in-kernel irqchip: both PICs and the IOAPIC, and the PIT.
IRQCHIPS = (("pic_master", uapi.KVM_IRQCHIP_PIC_MASTER), ("pic_slave", uapi.KVM_IRQCHIP_PIC_SLAVE),
            ("ioapic", uapi.KVM_IRQCHIP_IOAPIC))
# MSR_IA32_TSC_DEADLINE goes after the TSC it counts against (arch/x86/kvm/x86.c restores
# MSRs in the order given).
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0


def vcpu_pieces(irqchip: bool, xsave: bool) -> tuple[Piece, ...]:
    """The pieces a vCPU of this VM has: no LAPIC without the irqchip, the legacy FPU
    without XSAVE."""
    pieces = [p for p in VCPU_PIECES if irqchip or p.name not in NEEDS_IRQCHIP]
    if not xsave:
        pieces = [FPU if p.name == "xsave" else p for p in pieces if p.name != "xcrs"]
    return tuple(pieces)


def save_vcpu(vcpu: VcpuFd, pieces: tuple[Piece, ...], msrs: list[int]) -> dict[str, bytes]:
    """Every piece of ``vcpu`` as raw bytes, plus ``msrs`` (the MSRs KVM lists, as read)."""
    out = {p.name: bytes(vcpu.get_state(p.get, p.ctype)) for p in pieces}
    values = vcpu.get_msrs(msrs)
    out["msrs"] = b"".join(i.to_bytes(4, "little") + v.to_bytes(8, "little")
                           for i, v in values.items())
    out["cpuid"] = b"".join(bytes(e) for e in vcpu.get_cpuid2())
    return out


def decode_msrs(blob: bytes) -> dict[int, int]:
    """The ``msrs`` piece back to ``{index: value}`` (EINVAL for a length not of 12s)."""
    if len(blob) % 12:
        raise XInterfaceError(errno.EINVAL, f"msrs: {len(blob)} bytes is not a list of "
                              "(u32 index, u64 value)", argument="msrs", value=len(blob))
    pairs = {int.from_bytes(blob[i:i + 4], "little"): int.from_bytes(blob[i + 4:i + 12], "little")
             for i in range(0, len(blob), 12)}
    if MSR_IA32_TSC_DEADLINE in pairs:  # after the TSC, see above
        pairs[MSR_IA32_TSC_DEADLINE] = pairs.pop(MSR_IA32_TSC_DEADLINE)
    return pairs


def decode_cpuid(blob: bytes) -> list[uapi.kvm_cpuid_entry2]:
    size = ctypes.sizeof(uapi.kvm_cpuid_entry2)
    if len(blob) % size or not blob:
        raise XInterfaceError(errno.EINVAL, f"cpuid: {len(blob)} bytes is not a list of "
                              "kvm_cpuid_entry2", argument="cpuid", value=len(blob))
    return [uapi.kvm_cpuid_entry2.from_buffer_copy(blob, i) for i in range(0, len(blob), size)]


def restore_vcpu(vcpu: VcpuFd, pieces: tuple[Piece, ...], state: dict[str, bytes]) -> None:
    """Load what :func:`save_vcpu` saved into a vCPU that has not run (its CPUID may still
    change). A piece of the wrong size is ``EINVAL`` naming it, before any is set."""
    for p in pieces:
        _check_size(p.name, state.get(p.name), ctypes.sizeof(p.ctype))
    msrs = decode_msrs(state.get("msrs", b""))
    vcpu.set_cpuid2(decode_cpuid(state.get("cpuid", b"")))
    for p in pieces:
        if p.name == "mp_state":
            continue
        vcpu.set_state(p.set, p.ctype.from_buffer_copy(state[p.name]))
        if p.name == "lapic":
            # MSRs after the LAPIC: the TSC deadline timer arms against the restored LAPIC.
            _set_msrs(vcpu, msrs)
    if not any(p.name == "lapic" for p in pieces):
        _set_msrs(vcpu, msrs)
    for name in ("mp_state",):
        p = next(p for p in pieces if p.name == name)
        vcpu.set_state(p.set, p.ctype.from_buffer_copy(state[p.name]))


def _set_msrs(vcpu: VcpuFd, msrs: dict[int, int]) -> None:
    """Set ``msrs`` in order. KVM_SET_MSRS stops at the first MSR it refuses and returns how
    many it set; an MSR saved as 0 that this vCPU refuses is one its CPUID does not offer
    (kvm_pvm lists MSR_KVM_ASYNC_PF_INT without the feature) and stays at its reset value;
    any other refusal is ``EINVAL`` naming it."""
    items = list(msrs.items())
    while items:
        done = vcpu.set_msrs(dict(items))
        if done == len(items):
            return
        refused, value = items[done]
        if value != 0:
            raise XInterfaceError(errno.EINVAL, f"vCPU {vcpu.index}: KVM refused MSR "
                                  f"{refused:#x} (value {value:#x})", argument="msrs",
                                  value=refused)
        items = items[done + 1:]


def _check_size(name: str, blob: bytes | None, size: int) -> None:
    if blob is None or len(blob) != size:
        raise XInterfaceError(errno.EINVAL, f"vCPU state {name}: "
                              f"{'missing' if blob is None else f'{len(blob)} bytes'}, "
                              f"expected {size}", argument=name,
                              value=None if blob is None else len(blob))


def save_vm(vmfd: VmFd, irqchip: bool) -> dict[str, bytes]:
    """The VM-wide state: the KVM clock, and with the irqchip both PICs, the IOAPIC, the PIT."""
    clock = uapi.kvm_clock_data()
    vmfd.get_state(uapi.KVM_GET_CLOCK, clock)
    out = {"clock": bytes(clock)}
    if irqchip:
        for name, chip_id in IRQCHIPS:
            chip = uapi.kvm_irqchip(chip_id=chip_id)
            vmfd.get_state(uapi.KVM_GET_IRQCHIP, chip)
            out[name] = bytes(chip)
        pit = uapi.kvm_pit_state2()
        vmfd.get_state(uapi.KVM_GET_PIT2, pit)
        out["pit"] = bytes(pit)
    return out


def restore_vm(vmfd: VmFd, irqchip: bool, state: dict[str, bytes]) -> None:
    """Load :func:`save_vm`'s state (sizes and chip ids checked first)."""
    names: list[tuple[str, type[ctypes.Structure]]] = [("clock", uapi.kvm_clock_data)]
    if irqchip:
        names += [(name, uapi.kvm_irqchip) for name, _ in IRQCHIPS]
        names.append(("pit", uapi.kvm_pit_state2))
    for name, ctype in names:
        _check_size(name, state.get(name), ctypes.sizeof(ctype))
    if irqchip:
        for name, chip_id in IRQCHIPS:
            chip = uapi.kvm_irqchip.from_buffer_copy(state[name])
            if chip.chip_id != chip_id:
                raise XInterfaceError(errno.EINVAL, f"{name}: chip id {chip.chip_id}, expected "
                                      f"{chip_id}", argument=name, value=chip.chip_id)
            vmfd.set_state(uapi.KVM_SET_IRQCHIP, chip)
        vmfd.set_state(uapi.KVM_SET_PIT2, uapi.kvm_pit_state2.from_buffer_copy(state["pit"]))
    clock = uapi.kvm_clock_data.from_buffer_copy(state["clock"])
    # Only the clock value is KVM_SET_CLOCK's input; the flags it reported are outputs
    # (KVM_CLOCK_TSC_STABLE), and giving them back is EINVAL.
    clock.flags = 0
    vmfd.set_state(uapi.KVM_SET_CLOCK, clock)
