"""CPU templates (pure functions over KVM's supported CPUID) and the probe that asks a guest
what it sees, on real KVM."""

from __future__ import annotations

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from xinterface.kvm import Kvm, uapi
from xinterface.loader import cpuid
from xinterface.loader.cpuid_probe import (
    CpuidProbe,
    compare,
    host_cpuid_probe,
    linux_cmdline_workarounds,
    run_probe,
)


def entry(function: int, index: int = 0, flags: int = 0, value: int = 0xFFFFFFFF
          ) -> uapi.kvm_cpuid_entry2:
    e = uapi.kvm_cpuid_entry2()
    e.function, e.index, e.flags = function, index, flags
    e.eax = e.ebx = e.ecx = e.edx = value
    return e


# Everything set: what survives is what the template lets through.
ALL_ONES = [entry(0, value=0x1C), entry(1), entry(2), entry(6), entry(7, 0, 1), entry(7, 1, 1),
            entry(0xB, 0, 1), entry(0xD, 0, 1), entry(0xD, 1, 1), entry(0x40000000),
            entry(0x40000001), entry(0x80000000, value=0x80000021), entry(0x80000001),
            entry(0x80000007), entry(0x80000008), entry(0x8000001F)]


def test_baseline_drops_what_the_emulator_cannot_run() -> None:
    out = cpuid.baseline(ALL_ONES, 2)
    functions = {(e.function, e.index) for e in out}
    assert (0xD, 0) not in functions and (0xD, 1) not in functions    # no XSAVE leaf
    assert cpuid.leaf(out, 6) == (1 << cpuid.ARAT, 0, 0, 0)           # the LAPIC timer
    assert (0x8000001F, 0) not in functions
    assert (7, 1) not in functions
    assert cpuid.leaf(out, 7) == (0, 0, 0, 0)                          # SMEP, SMAP, FSGSBASE...
    assert (0x40000000, 0) in functions
    # KVM's paravirtual features: QEMU's default set, no PV IPIs (hang kvm_pvm SMP guests).
    assert cpuid.leaf(out, 0x40000001) == (cpuid.BASELINE_KVM_FEATURES, 0, 0, 0)
    assert not cpuid.BASELINE_KVM_FEATURES >> cpuid.KVM_FEATURE_PV_SEND_IPI & 1
    _, ebx, ecx, edx = cpuid.leaf(out, 1) or (0, 0, 0, 0)
    assert ebx >> 24 == 2                                              # APIC id of vCPU 2
    for bit in (cpuid.XSAVE, cpuid.OSXSAVE, cpuid.AVX, cpuid.POPCNT, cpuid.SSSE3, cpuid.SSE4_2,
                cpuid.MOVBE, cpuid.RDRAND, cpuid.X2APIC):
        assert not ecx >> bit & 1, bit
    assert ecx == cpuid.BASELINE_1_ECX and edx == cpuid.BASELINE_1_EDX
    assert cpuid.leaf(out, 0) == (0xC, 0x1C, 0x1C, 0x1C)
    assert (cpuid.leaf(out, 0x80000000) or (0,))[0] == 0x80000008
    ext = cpuid.leaf(out, 0x80000001) or (0, 0, 0, 0)
    assert ext[2] == 1 << cpuid.LAHF_LM and ext[3] & (1 << cpuid.LM | 1 << cpuid.NX)
    assert cpuid.leaf(out, 0x80000008)[1:] == (1 << cpuid.XSAVEERPTR, 0xFFFFFFFF, 0)  # type: ignore[index]
    topology = cpuid.leaf(out, 0xB) or (0, 0, 0, 0)
    assert topology[3] == 2                                            # x2APIC id
    # Inputs untouched: the functions are pure.
    assert ALL_ONES[1].ecx == 0xFFFFFFFF and ALL_ONES[1].ebx == 0xFFFFFFFF


def test_host_template_is_kvm_supported_with_apic_ids() -> None:
    out = cpuid.host(ALL_ONES, 5)
    assert len(out) == len(ALL_ONES)
    assert cpuid.leaf(out, 1) == (0xFFFFFFFF, 0x05FFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert cpuid.leaf(out, 7) == (0xFFFFFFFF,) * 4


def test_unknown_template_one_clear_error() -> None:
    with pytest.raises(xi.XInterfaceError, match=r"unknown CPU template 'pentium'.*host, "
                       r"baseline") as info:
        cpuid.template("pentium")
    assert info.value.argument == "cpu"
    assert cpuid.template("baseline") is cpuid.baseline


def test_compare_names_leaked_bits_and_ignores_dynamic_ones() -> None:
    given = {(1, 0): (0, 0, 0, 0), (7, 0): (0, 0, 0, 0)}
    seen = {(1, 0): (0xFFFF, 0xFF000000, 1 << cpuid.XSAVE | 1 << cpuid.OSXSAVE, 1 << cpuid.APIC),
            (7, 0): (1, 1 << cpuid.SMAP | 1 << 1, 0, 0)}
    assert compare(given, seen) == ("XSAVE", "CPUID.07H:EBX[1]", "SMAP")


def test_workarounds_follow_the_leaks() -> None:
    leaky = CpuidProbe({}, {}, ("XSAVE", "POPCNT", "SMAP", "FSGSBASE", "AVX"))
    assert linux_cmdline_workarounds(leaky) == ["noxsave", "clearcpuid=308,288,151"]
    numbers = {"SMAP": 1, "FSGSBASE": 2, "POPCNT": 3}
    assert linux_cmdline_workarounds(CpuidProbe({}, {}, ("POPCNT",)), numbers) == [
        "clearcpuid=3"]
    assert linux_cmdline_workarounds(CpuidProbe({}, {}, ())) == []


@needs_kvm
@pytest.mark.parametrize("name", ["host", "baseline"])
def test_template_as_the_guest_sees_it(name: str) -> None:
    with Kvm() as kvm:
        entries = cpuid.template(name)(kvm.get_supported_cpuid(), 3)
    probe = run_probe(entries)
    # Honoured on every host measured: the APIC id (leaf 1 EBX) and leaf 0x80000008.
    assert probe.seen[(1, 0)][1] >> 24 == 3
    assert probe.seen[(0x80000008, 0)][1] == probe.given[(0x80000008, 0)][1]
    assert probe.seen[(0x40000001, 0)][0] == probe.given[(0x40000001, 0)][0]
    if name == "baseline":
        assert probe.sees(0x80000008, "ebx", cpuid.XSAVEERPTR)
    # Whatever the host does with the rest, the probe's verdict is the comparison.
    assert probe.leaked == compare(probe.given, probe.seen)
    assert probe.honoured == (probe.leaked == ())


@needs_kvm
def test_host_probe_and_its_workarounds_agree() -> None:
    probe = host_cpuid_probe()
    assert host_cpuid_probe() is probe          # probed once per process
    args = linux_cmdline_workarounds(probe)
    assert ("noxsave" in args) == ("XSAVE" in probe.leaked)
    if probe.honoured:
        assert args == []
