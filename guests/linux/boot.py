#!/usr/bin/env python3
"""Boot the cached test kernel on xinterface's VMM and say how long it took.

    python3 guests/linux/boot.py [--bzimage] [--vcpus N] [--memory MiB] [--verbose]
                                 [--append "..."] [--cpu baseline|host] [--no-workarounds]

Builds the kernel first if the cache lacks it (build.py). Prints the console, then the time
from this process's start to the init marker and to the end of the run, and the exits by
kind. The machine is the microvm board (COM1 console, reset ports), irqchip on.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))

import build  # noqa: E402

from xinterface.build import build as build_vm  # noqa: E402
from xinterface.build import build_machine  # noqa: E402
from xinterface.devices.output import Until  # noqa: E402
from xinterface.loader import cpuid  # noqa: E402
from xinterface.loader.cpuid_probe import host_cpuid_probe, linux_cmdline_workarounds  # noqa: E402
from xinterface.spec import Boot, MachineSpec  # noqa: E402

MARKER = b"XINTERFACE-INIT-OK"
BASE_CMDLINE = "console=ttyS0 reboot=p panic=-1 noreplace-smp rodata=off"


def process_age() -> float:
    """Seconds since this process started (/proc/self/stat starttime, proc(5))."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    return float(Path("/proc/uptime").read_text().split()[0]) - start


class Tee:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> int:
        self.buffer.write(data)
        sys.stdout.buffer.write(data)
        return len(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bzimage", action="store_true", help="boot protocol, not PVH")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory", type=int, default=64, help="MiB")
    parser.add_argument("--verbose", action="store_true", help="without 'quiet'")
    parser.add_argument("--append", default="")
    parser.add_argument("--cpu", default="baseline", choices=sorted(cpuid.TEMPLATES))
    parser.add_argument("--no-workarounds", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    paths = build.ensure_built(os.cpu_count() or 1)
    features = json.loads(Path(paths["features"]).read_text())["x86_features"]
    extra = [] if args.no_workarounds else linux_cmdline_workarounds(host_cpuid_probe(),
                                                                      features)
    if extra:
        print(f"boot.py: this host does not apply KVM_SET_CPUID2 to the guest's CPUID: adding "
              f"'{' '.join(extra)}' to the command line", file=sys.stderr)
    cmdline = " ".join([BASE_CMDLINE, *([] if args.verbose else ["quiet"]), *extra,
                        args.append]).strip()
    spec = MachineSpec(memory=args.memory << 20, vcpus=args.vcpus, cpu=args.cpu,
                       board="microvm",
                       boot=Boot(kernel=str(paths["bzImage" if args.bzimage else "vmlinux"]),
                                 initrd=str(paths["initramfs"]), cmdline=cmdline))
    seen: list[float] = []
    tee = Tee()
    with build_machine(spec) as m:
        loaded = build_vm(spec, m, serial=Until(tee, MARKER, lambda: seen.append(process_age())),
                       debugcon=io.BytesIO()).kernel
        assert loaded is not None
        print(f"boot.py: {loaded.protocol} entry {loaded.entry:#x}, command line: {cmdline}",
              file=sys.stderr)
        result = m.run(timeout=args.timeout)
    end = process_age()
    marker = f"{seen[0]:.2f} s" if seen else "never"
    print(f"\nboot.py: marker at {marker}, run ended ({result.reason}) at {end:.2f} s from "
          f"process start; exits {dict(sorted(result.exits.items()))}", file=sys.stderr)
    return 0 if seen and result.reason == "reset" else 1


if __name__ == "__main__":
    sys.exit(main())
