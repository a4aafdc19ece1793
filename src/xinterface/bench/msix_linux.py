"""Linux on the pc board reading its disks in a loop, with MSI-X and with INTx: interrupts
per request and time per request, for a disk of ours (vda, in-process virtio-blk) and one
qemu-storage-daemon serves over vhost-user-blk (vdb: its call fd an irqfd of KVM's with
MSI-X, relayed by this process as INTx without).

The test kernel's /init (guests/linux/init.sh, ``xinterface.readloop=N``) reads one 4 KiB
block of each disk with O_DIRECT, then N of them, between marks on COM1; this process
stamps each mark as it arrives. Time per request is (span of N - span of 1) / (N - 1), so
starting dd (a fork and exec, a second of emulated kernel here) cancels out. INTx is the
same kernel with ``pci=nomsi``. Interrupts per request: what the VMM raised (ours: the
transport's interrupts; the backend's: the call fds relayed) or, for a call fd KVM takes,
the guest's /proc/interrupts, over the guest's completed reads (/proc/diskstats), boot
included. Run::

    PYTHONPATH=src python -m xinterface.bench.msix_linux --reads 200

Two Linux boots of minutes each on kvm_pvm; quote ``uptime`` beside the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..build import build, build_machine
from ..spec import Boot, Disk, MachineSpec, VhostUser
from ..vhost_user.device import VhostUserBlk
from ..virtio.pci import VirtioPci

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "guests" / "linux" / "build.py"
CMDLINE = "console=ttyS0 reboot=p panic=-1 noreplace-smp rodata=off quiet"
TIMEOUT = 900.0


class StampedConsole:
    """COM1's bytes, each ``readloop:`` line stamped with when its end arrived."""

    def __init__(self) -> None:
        self.data = io.BytesIO()
        self.stamps: dict[str, float] = {}
        self._line = b""
        self._lock = threading.Lock()

    def write(self, data: bytes, /) -> int:
        now = time.monotonic()
        with self._lock:
            self.data.write(data)
            self._line += data
            while b"\n" in self._line:
                line, self._line = self._line.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith("readloop: "):
                    self.stamps[text] = now
        return len(data)

    def flush(self) -> None:
        pass


@dataclass
class DiskFigure:
    name: str
    reads: int = 0
    interrupts: int = 0
    path: str = ""
    seconds_per_request: float | None = None

    @property
    def interrupts_per_request(self) -> float | None:
        return self.interrupts / self.reads if self.reads else None


@dataclass
class Run:
    mode: str
    disks: dict[str, DiskFigure] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    reason: str = ""


def _paths() -> dict[str, str]:
    done = subprocess.run([sys.executable, str(BUILD), "--json"], capture_output=True,
                          text=True, check=True)
    paths: dict[str, str] = json.loads(done.stdout)
    return paths


def _workarounds(paths: dict[str, str]) -> list[str]:
    from ..loader.cpuid_probe import host_cpuid_probe, linux_cmdline_workarounds

    features = json.loads(Path(paths["features"]).read_text())["x86_features"]
    return linux_cmdline_workarounds(host_cpuid_probe(), features)


def one_run(paths: dict[str, str], mode: str, reads: int, work: Path) -> Run:
    """One boot: ``mode`` "msix" or "intx" (``pci=nomsi``)."""
    ours, served, sock = work / "ours.img", work / "served.img", work / f"{mode}.sock"
    for image in (ours, served):
        if not image.exists():
            subprocess.run([sys.executable, str(BUILD), "ext2", str(image), "--file",
                            "hello.txt=bench"], check=True)
    daemon = subprocess.Popen(
        ["qemu-storage-daemon", "--blockdev",
         f"driver=file,node-name=file0,filename={served}",
         "--blockdev", "driver=raw,node-name=disk0,file=file0",
         "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                     f"addr.path={sock},writable=off"])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        extra = ["pci=nomsi"] if mode == "intx" else []
        cmdline = " ".join([CMDLINE, "xinterface.interrupts", f"xinterface.readloop={reads}",
                            *extra, *_workarounds(paths)])
        spec = MachineSpec(board="pc", cpu="baseline",
                           boot=Boot(kernel=paths["vmlinux"], initrd=paths["initramfs"],
                                     cmdline=cmdline),
                           disks=(Disk(str(ours), True),),
                           vhost_user=(VhostUser("blk", str(sock)),))
        console = StampedConsole()
        run = Run(mode)
        with build_machine(spec) as m:
            built = build(spec, m, serial=console, debugcon=io.BytesIO())
            assert built.platform is not None
            result = m.run(timeout=TIMEOUT)
            run.reason, run.exits = result.reason, dict(result.exits)
            own, proxy = built.platform.virtio
            assert isinstance(own, VirtioPci) and isinstance(proxy, VirtioPci)
            device = proxy.device
            assert isinstance(device, VhostUserBlk)
            text = console.data.getvalue().decode(errors="replace")
            irqs = {name: int(count) for count, name in re.findall(
                r"irq: +\d+: +(\d+) +PCI-MSI \S+ +(virtio\d-req\.0)", text)}
            for name, index in (("vda", 0), ("vdb", 1)):
                figure = DiskFigure(name)
                found = re.search(rf"readloop: {name} reads (\d+)", text)
                figure.reads = int(found.group(1)) if found else 0
                if name == "vda":
                    figure.interrupts = own.stats["interrupts"]
                    figure.path = "MSI-X message from this process" if mode == "msix" else (
                        "INTx (ISR read, level line)")
                elif mode == "msix":
                    figure.interrupts = irqs.get(f"virtio{index}-req.0", 0)
                    figure.path = "irqfd (call fd to KVM)"
                    assert device.stats["call"] == 0, "a call fd was relayed with MSI-X"
                else:
                    figure.interrupts = device.stats["call"]
                    figure.path = "relayed by this process as INTx"
                stamps = console.stamps
                one = stamps.get(f"readloop: {name} one")
                start = stamps.get(f"readloop: {name} start {reads}")
                end = stamps.get(f"readloop: {name} end")
                if one is not None and start is not None and end is not None and reads > 1:
                    figure.seconds_per_request = ((end - start) - (start - one)) / (reads - 1)
                run.disks[name] = figure
        return run
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--modes", default="msix,intx")
    args = parser.parse_args()
    paths = _paths()
    print(f"{args.reads} reads of 4 KiB per disk, O_DIRECT")
    print(f"{'mode':5} {'disk':4} {'path':34} {'reads':>6} {'irqs':>6} {'irq/req':>8} "
          f"{'us/req':>8}", flush=True)
    with tempfile.TemporaryDirectory(prefix="xi-msix-") as tmp:
        for mode in args.modes.split(","):
            load = os.getloadavg()
            run = one_run(paths, mode, args.reads, Path(tmp))
            after = os.getloadavg()
            for figure in run.disks.values():
                per = figure.interrupts_per_request
                us = figure.seconds_per_request
                print(f"{run.mode:5} {figure.name:4} {figure.path:34} {figure.reads:6} "
                      f"{figure.interrupts:6} {'-' if per is None else f'{per:.2f}':>8} "
                      f"{'-' if us is None else f'{us * 1e6:.0f}':>8}")
            print(f"{run.mode:5} run ended: {run.reason}; exits {run.exits}; load average "
                  f"{load[0]:.2f} before, {after[0]:.2f} after", flush=True)


if __name__ == "__main__":
    main()
