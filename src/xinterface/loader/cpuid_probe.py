"""Does this host honour ``KVM_SET_CPUID2``? Ask a guest.

A tiny guest (``guests/cpuid_probe.S``) executes CPUID for leaves 1, 7, 0x80000001 and
0x80000008 and reports the registers through an I/O port, in a throw-away VM whose vCPU was
given a masked CPUID (the ``baseline`` template); a few lines of KVM_RUN serve it, its exits
decoded by the shared :func:`xinterface.kvm.exits.decode`, so the probe needs no Machine
(which sits above the loaders). A feature bit the guest sees although the VMM cleared it has
*leaked*: the host does not apply the VMM's CPUID to the ``cpuid``
instruction. That is the case on ``kvm_pvm`` (see the note on Linux on kvm_pvm), where
guests see the host's XSAVE, POPCNT, SMAP and FSGSBASE whatever CPUID is set; a kernel must
then be told not to use them on its command line (``linux_cmdline_workarounds``).
"""

from __future__ import annotations

import errno
import functools
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XInterfaceError
from ..kvm import Kvm, VcpuFd, exits, uapi
from ..vm import Vm
from . import cpuid
from .asm import assemble
from .flat import load_flat

PROBE_SOURCE = Path(__file__).parent / "guests" / "cpuid_probe.S"
PROBE_GPA = 0x1000
PROBE_PORT = 0x00E0          # unclaimed on our boards
PROBE_MAX_EXITS = 64         # the guest makes 4 OUTs per leaf and one HLT
PROBED_LEAVES = ((0x1, 0), (0x7, 0), (0x40000001, 0), (0x80000001, 0), (0x80000008, 0))
REGS = ("eax", "ebx", "ecx", "edx")
# Bits that reflect guest state rather than a static feature (SDM Vol. 2A, CPUID): OSXSAVE
# (CR4.OSXSAVE), APIC (IA32_APIC_BASE enable, also in AMD's 0x80000001 copy), OSPKE (CR4.PKE).
DYNAMIC_BITS = {(0x1, "ecx"): 1 << cpuid.OSXSAVE, (0x1, "edx"): 1 << cpuid.APIC,
                (0x7, "ecx"): 1 << cpuid.OSPKE, (0x80000001, "edx"): 1 << cpuid.APIC}
# Registers compared: the feature flags. EAX/EBX of leaf 1 hold ids, not features.
FEATURE_REGS = {0x1: ("ecx", "edx"), 0x7: ("ebx", "ecx", "edx"), 0x40000001: ("eax",),
                0x80000001: ("ecx", "edx"), 0x80000008: ("ebx",)}
FEATURE_NAMES = {
    (0x1, "ecx", cpuid.SSSE3): "SSSE3", (0x1, "ecx", cpuid.SSE4_1): "SSE4_1",
    (0x1, "ecx", cpuid.SSE4_2): "SSE4_2", (0x1, "ecx", cpuid.X2APIC): "X2APIC",
    (0x1, "ecx", cpuid.MOVBE): "MOVBE", (0x1, "ecx", cpuid.POPCNT): "POPCNT",
    (0x1, "ecx", cpuid.TSC_DEADLINE): "TSC_DEADLINE", (0x1, "ecx", cpuid.XSAVE): "XSAVE",
    (0x1, "ecx", cpuid.AVX): "AVX", (0x1, "ecx", cpuid.RDRAND): "RDRAND",
    (0x7, "ebx", cpuid.FSGSBASE): "FSGSBASE", (0x7, "ebx", cpuid.AVX2): "AVX2",
    (0x7, "ebx", cpuid.SMEP): "SMEP", (0x7, "ebx", cpuid.ERMS): "ERMS",
    (0x7, "ebx", cpuid.SMAP): "SMAP",
    (0x40000001, "eax", cpuid.KVM_FEATURE_PV_SEND_IPI): "KVM_PV_SEND_IPI",
}

# The kernel's own switches for features kvm_pvm's emulator cannot execute at CPL0 (the
# note): "noxsave" for XSAVE (xrstor in FPU init; AVX and the rest go with it), and
# clearcpuid=<X86_FEATURE number> for POPCNT (popcnt), SMAP (clac/stac) and FSGSBASE
# (rdgsbase/wrgsbase at context switch). The numbers are word * 32 + bit in the kernel's
# arch/x86/include/asm/cpufeatures.h; these are Linux 6.1's (guests/linux/build.py writes the
# built kernel's own into features.json).
CLEARCPUID_FEATURES = ("SMAP", "FSGSBASE", "POPCNT")
LINUX_6_1_FEATURES = {"XSAVE": 4 * 32 + 26, "POPCNT": 4 * 32 + 23, "SMAP": 9 * 32 + 20,
                      "FSGSBASE": 9 * 32 + 0}

Registers = tuple[int, int, int, int]


@dataclass(frozen=True)
class CpuidProbe:
    """What the probe guest saw next to what its vCPU was given."""

    given: dict[tuple[int, int], Registers]
    seen: dict[tuple[int, int], Registers]
    leaked: tuple[str, ...] = field(default=())

    @property
    def honoured(self) -> bool:
        """Every feature bit the VMM cleared stayed clear in the guest."""
        return not self.leaked

    def sees(self, function: int, register: str, bit: int) -> bool:
        regs = self.seen.get((function, 0))
        return regs is not None and bool(regs[REGS.index(register)] >> bit & 1)


def _bit_name(function: int, register: str, bit: int) -> str:
    return FEATURE_NAMES.get((function, register, bit),
                             f"CPUID.{function:02X}H:{register.upper()}[{bit}]")


def compare(given: Mapping[tuple[int, int], Registers],
            seen: Mapping[tuple[int, int], Registers]) -> tuple[str, ...]:
    """Names of the feature bits set in ``seen`` but clear in ``given``."""
    leaked = []
    for (function, index), regs in seen.items():
        wanted = given.get((function, index), (0, 0, 0, 0))
        for register in FEATURE_REGS.get(function, ()):
            i = REGS.index(register)
            extra = regs[i] & ~wanted[i] & ~DYNAMIC_BITS.get((function, register), 0)
            leaked += [_bit_name(function, register, bit) for bit in range(32)
                       if extra >> bit & 1]
    return tuple(leaked)


def _serve(vcpu: VcpuFd) -> list[int]:
    """Run the probe to its HLT; the 4-byte OUTs to PROBE_PORT, in order."""
    mm = vcpu.run_mmap
    words: list[int] = []
    for _ in range(PROBE_MAX_EXITS):
        vcpu.run()
        exit = exits.decode(mm)
        if isinstance(exit, exits.Halt):
            return words
        if not (isinstance(exit, exits.Access) and exit.space is exits.Space.PIO):
            break
        if exit.is_write and exit.addr == PROBE_PORT and exit.size == 4:
            words += struct.unpack_from(f"<{exit.count}I", mm, exit.data_offset)
    reason = exits.reason(mm)
    raise XInterfaceError(errno.EIO, f"the CPUID probe guest did not halt (exit reason "
                          f"{uapi.EXIT_REASON_NAMES.get(reason, reason)} after {len(words)} "
                          "words)", argument="probe", value=reason)


def run_probe(entries: Sequence[uapi.kvm_cpuid_entry2] | None = None) -> CpuidProbe:
    """Run the probe guest with ``entries`` as its CPUID (default: the baseline template)."""
    image = assemble(PROBE_SOURCE, gpa=PROBE_GPA, defines={"PROBE_PORT": PROBE_PORT})
    if entries is None:
        with Kvm() as kvm:
            entries = cpuid.baseline(kvm.get_supported_cpuid(), 0)
    with Vm(memory=1 << 20) as vm:
        vcpu = vm.vcpus[0]
        vcpu.set_cpuid2(entries)
        assert vm.memory is not None
        load_flat(vm.memory, [vcpu], image, PROBE_GPA, "protected")
        words = _serve(vcpu)
    if len(words) != 4 * len(PROBED_LEAVES):
        raise XInterfaceError(errno.EIO, f"the CPUID probe guest wrote {len(words)} words, not "
                              f"{4 * len(PROBED_LEAVES)}", argument="probe", value=len(words))
    seen: dict[tuple[int, int], Registers] = {}
    given: dict[tuple[int, int], Registers] = {}
    for i, key in enumerate(PROBED_LEAVES):
        a, b, c, d = words[4 * i:4 * i + 4]
        seen[key] = (a, b, c, d)
        given[key] = cpuid.leaf(entries, *key) or (0, 0, 0, 0)
    return CpuidProbe(given, seen, compare(given, seen))


@functools.cache
def host_cpuid_probe() -> CpuidProbe:
    """The baseline probe, run once per process."""
    return run_probe()


def linux_cmdline_workarounds(probe: CpuidProbe,
                              features: Mapping[str, int] | None = None) -> list[str]:
    """Kernel command-line switches that keep Linux off the leaked features kvm_pvm's
    emulator cannot execute; empty when the host honours the CPUID.

    ``features``: X86_FEATURE numbers of the kernel in use (``features.json`` of the test
    kernel build); Linux 6.1's by default.
    """
    numbers = dict(LINUX_6_1_FEATURES if features is None else features)
    args = []
    if "XSAVE" in probe.leaked:
        args.append("noxsave")
    clear = [numbers[name] for name in CLEARCPUID_FEATURES
             if name in probe.leaked and name in numbers]
    if clear:
        args.append("clearcpuid=" + ",".join(str(n) for n in clear))
    return args
