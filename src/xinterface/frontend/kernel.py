"""``xinterface boot --kernel``: a Linux kernel booted directly (no firmware), as QEMU's
``-kernel`` and Firecracker do, with the CPU template and this host's quirk handled (the
builder, :mod:`xinterface.build`, loads it)."""

from __future__ import annotations

import sys

from ..loader.cpuid_probe import host_cpuid_probe, linux_cmdline_workarounds

# A kernel panic ends the run with an error carrying this line (the kernel's own words).
PANIC = b"Kernel panic - not syncing"


def kernel_cmdline(append: str, cpu: str, workarounds: bool) -> str:
    """``append`` plus, where the host does not honour the CPUID the VMM sets (kvm_pvm), the
    kernel's own switches for the features it leaks: said once on stderr (docs/linux.md)."""
    words = append.split()
    if workarounds and cpu != "host":
        probe = host_cpuid_probe()
        extra = [w for w in linux_cmdline_workarounds(probe) if w not in words]
        if extra:
            named = [n for n in probe.leaked if not n.startswith("CPUID.")][:4]
            print(f"xinterface note: this host's KVM shows guests {len(probe.leaked)} CPUID bits "
                  f"the VMM cleared ({', '.join(named)}, ...); adding to the kernel command "
                  f"line: "
                  f"{' '.join(extra)} (--cpu host or --no-cpu-workarounds to leave it alone)",
                  file=sys.stderr)
            words += extra
    return " ".join(words)
