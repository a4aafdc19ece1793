"""CPU templates: the CPUID a vCPU is given, as pure functions of what KVM supports.

- ``host``: ``KVM_GET_SUPPORTED_CPUID`` as KVM offers it, with each vCPU's APIC id.
- ``baseline``: a documented x86-64 baseline, the same on any host that offers it: the x86-64
  psABI level x86-64-v1 (FPU, CX8, CMOV, MMX, FXSR, SSE, SSE2, SYSCALL, NX, LM) plus SSE3,
  CMPXCHG16B and LAHF/SAHF in long mode (what QEMU's ``qemu64`` model offers). Left out on
  purpose: XSAVE and everything built on it (AVX*, leaf 0xD), SSSE3, SSE4.x, POPCNT, MOVBE,
  RDRAND/RDSEED, x2APIC, all of leaf 7 (SMEP, SMAP, FSGSBASE, BMI, ERMS, ...), PMU and monitor
  leaves. Added: what KVM's in-kernel local APIC provides, the TSC-deadline timer mode and an
  APIC timer that always runs (ARAT, leaf 6): with both, Linux needs no PIT
  (arch/x86/kernel/apic/apic.c, ``apic_needs_pit``); without them a 2-vCPU boot on kvm_pvm
  drowned in IRQ 0. Kept: vendor, family/model/stepping, brand string, cache and topology
  leaves, address sizes, KVM's signature leaf and, of its paravirtual features (leaf
  0x40000001 EAX, Documentation/virt/kvm/x86/cpuid.rst), the set QEMU offers by default:
  kvmclock (both MSR sets and the stable bit), no-I/O-delay, async page faults, steal time and
  PV EOI. Not the hypercall-based ones (PV IPIs, TLB flush, sched yield, ...): on kvm_pvm a
  Linux guest's KVM_HC_SEND_IPI VMCALL never completes (measured: SMP boot hangs on it). Leaf
  0x80000008 EBX is reduced to XSAVEERPTR (bit 2), which tells Linux that FXSAVE always saves
  the FPU error pointers, so it skips its AMD leak workaround (an ``fnclex``; kvm_pvm's
  emulator cannot run it, see the note on Linux on kvm_pvm).

Bit positions: Intel SDM Vol. 2A, CPUID, Tables 3-8 to 3-10; AMD APM Vol. 3, Appendix E.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from ..errors import XInterfaceError
from ..kvm import uapi

Entries = list[uapi.kvm_cpuid_entry2]

# Leaf 1 EDX (SDM Table 3-11).
FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC = 0, 2, 3, 4, 5, 6, 7, 8, 9
SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFSH = 11, 12, 13, 14, 15, 16, 17, 19
MMX, FXSR, SSE, SSE2 = 23, 24, 25, 26
# Leaf 1 ECX (SDM Table 3-10).
SSE3, SSSE3, CX16, SSE4_1, SSE4_2, X2APIC, MOVBE, POPCNT = 0, 9, 13, 19, 20, 21, 22, 23
TSC_DEADLINE, XSAVE, OSXSAVE, AVX, RDRAND, HYPERVISOR = 24, 26, 27, 28, 30, 31
# Leaf 7.0 EBX/ECX (SDM Table 3-8).
FSGSBASE, AVX2, SMEP, ERMS, SMAP = 0, 5, 7, 9, 20
OSPKE = 4                 # ECX: reflects CR4.PKE, not a static feature
# Leaf 0x80000001 (AMD APM E.4.2; SDM for the Intel subset).
LAHF_LM = 0               # ECX
SYSCALL, NX, LM = 11, 20, 29  # EDX
# Leaf 0x80000007 EDX, leaf 0x80000008 EBX (AMD APM E.4.7, E.4.8).
INVARIANT_TSC = 8
XSAVEERPTR = 2
# Leaf 0x40000001 EAX: KVM paravirtual features (Documentation/virt/kvm/x86/cpuid.rst).
KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_NOP_IO_DELAY, KVM_FEATURE_CLOCKSOURCE2 = 0, 1, 3
KVM_FEATURE_ASYNC_PF, KVM_FEATURE_STEAL_TIME, KVM_FEATURE_PV_EOI = 4, 5, 6
KVM_FEATURE_PV_SEND_IPI = 11
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24


def _bits(*positions: int) -> int:
    mask = 0
    for bit in positions:
        mask |= 1 << bit
    return mask


BASELINE_1_EDX = _bits(FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR, PGE, MCA, CMOV,
                       PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2)
BASELINE_1_ECX = _bits(SSE3, CX16, TSC_DEADLINE, HYPERVISOR)
ARAT = 2                  # leaf 6 EAX: the APIC timer runs in every C-state (SDM Table 3-8)
# AMD repeats the leaf-1 EDX bits 0-17 and 23-24 in 0x80000001 EDX; Intel reports them 0.
BASELINE_EXT_EDX = _bits(SYSCALL, NX, LM) | (BASELINE_1_EDX & (0x3FFFF | _bits(MMX, FXSR)))
BASELINE_EXT_ECX = _bits(LAHF_LM)
BASELINE_KVM_FEATURES = _bits(KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_NOP_IO_DELAY,
                              KVM_FEATURE_CLOCKSOURCE2, KVM_FEATURE_ASYNC_PF,
                              KVM_FEATURE_STEAL_TIME, KVM_FEATURE_PV_EOI,
                              KVM_FEATURE_CLOCKSOURCE_STABLE_BIT)
# Leaves kept as KVM gives them (apart from the APIC ids): vendor and maximum (fixed below),
# cache descriptors, deterministic cache parameters, topology, brand string, L1/L2 caches.
_BASELINE_KEPT = {0x0, 0x2, 0x4, 0xB, 0x1F, 0x80000000, 0x80000002, 0x80000003, 0x80000004,
                  0x80000005, 0x80000006}
KVM_LEAVES = range(0x40000000, 0x40000100)   # KVM's signature and paravirtual features
KVM_FEATURES_LEAF = 0x40000001
BASELINE_MAX_BASIC = 0xD - 1                  # no XSAVE leaf
BASELINE_MAX_EXTENDED = 0x80000008


def _copy(entry: uapi.kvm_cpuid_entry2) -> uapi.kvm_cpuid_entry2:
    return uapi.kvm_cpuid_entry2.from_buffer_copy(entry)


def with_apic_id(entries: Sequence[uapi.kvm_cpuid_entry2], index: int) -> Entries:
    """Copies of ``entries`` telling vCPU ``index`` its initial APIC id: CPUID.01H:EBX[31:24]
    and the x2APIC id in EDX of the topology leaves 0xB and 0x1F (SDM Vol. 2A, CPUID)."""
    out = []
    for entry in entries:
        e = _copy(entry)
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((index & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = index
        out.append(e)
    return out


def host(supported: Sequence[uapi.kvm_cpuid_entry2], index: int) -> Entries:
    """What ``KVM_GET_SUPPORTED_CPUID`` offers, with vCPU ``index``'s APIC id."""
    return with_apic_id(supported, index)


def baseline(supported: Sequence[uapi.kvm_cpuid_entry2], index: int) -> Entries:
    """The documented baseline (module docstring), intersected with what KVM supports."""
    out: Entries = []
    for entry in supported:
        fn = entry.function
        e = _copy(entry)
        if fn == 0:
            e.eax = min(e.eax, BASELINE_MAX_BASIC)
        elif fn == 1:
            e.ecx &= BASELINE_1_ECX
            e.edx &= BASELINE_1_EDX
        elif fn == 6:
            e.eax &= _bits(ARAT)
            e.ebx = e.ecx = e.edx = 0
        elif fn == 7:
            e.eax = e.ebx = e.ecx = e.edx = 0
            if e.index:
                continue
        elif fn == 0x80000000:
            e.eax = min(e.eax, BASELINE_MAX_EXTENDED)
        elif fn == 0x80000001:
            e.ecx &= BASELINE_EXT_ECX
            e.edx &= BASELINE_EXT_EDX
        elif fn == 0x80000007:
            e.eax = e.ebx = e.ecx = 0
            e.edx &= _bits(INVARIANT_TSC)
        elif fn == 0x80000008:
            e.ebx = _bits(XSAVEERPTR)
            e.edx = 0
        elif fn == KVM_FEATURES_LEAF:
            e.eax &= BASELINE_KVM_FEATURES
            e.ebx = e.ecx = e.edx = 0
        elif fn not in _BASELINE_KEPT and fn not in KVM_LEAVES:
            continue
        out.append(e)
    if not any(e.function == 0x80000008 for e in out) and any(
            e.function == 0x80000000 for e in out):
        extra = uapi.kvm_cpuid_entry2()
        extra.function, extra.ebx = 0x80000008, _bits(XSAVEERPTR)
        out.append(extra)
    return with_apic_id(out, index)


Template = Callable[[Sequence[uapi.kvm_cpuid_entry2], int], Entries]
TEMPLATES: dict[str, Template] = {"host": host, "baseline": baseline}


def template(name: str) -> Template:
    """The template called ``name``, or one clear error listing the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise XInterfaceError(errno.EINVAL, f"unknown CPU template {name!r}: use one of "
                              f"{', '.join(TEMPLATES)}", argument="cpu", value=name) from None


def leaf(entries: Sequence[uapi.kvm_cpuid_entry2], function: int,
         index: int = 0) -> tuple[int, int, int, int] | None:
    """(EAX, EBX, ECX, EDX) of a leaf in ``entries``; None when absent."""
    for e in entries:
        if e.function == function and (e.index == index or not e.flags & 1):
            return e.eax, e.ebx, e.ecx, e.edx
    return None
