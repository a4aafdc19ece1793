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
import atexit
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..build import build, build_machine
from ..spec import Boot, Disk, MachineSpec, VhostUser
from ..vhost_user.device import VhostUserBlk
from ..virtio.pci import VirtioPci
from .snapshot import LinuxUnavailable, linux_images

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


def disk_figures(text: str, stamps: dict[str, float], mode: str, reads: int,
                 counts: dict[str, int | None]) -> dict[str, DiskFigure]:
    """Each disk's figures from the console of one boot: the reads /proc/diskstats counted,
    the time per request from the stamped marks, and the interrupts, ``counts[name]`` (what
    this process raised or relayed) or, where None (a call fd KVM takes), the guest's
    /proc/interrupts line for the disk's request queue."""
    irqs = {name: int(count) for count, name in re.findall(
        r"irq: +\d+: +(\d+) +PCI-MSI \S+ +(virtio\d-req\.0)", text)}
    out: dict[str, DiskFigure] = {}
    for index, name in enumerate(("vda", "vdb")):
        figure = DiskFigure(name)
        found = re.search(rf"readloop: {name} reads (\d+)", text)
        figure.reads = int(found.group(1)) if found else 0
        count = counts.get(name)
        figure.interrupts = irqs.get(f"virtio{index}-req.0", 0) if count is None else count
        figure.path = PATHS[name, mode]
        one = stamps.get(f"readloop: {name} one")
        start = stamps.get(f"readloop: {name} start {reads}")
        end = stamps.get(f"readloop: {name} end")
        if one is not None and start is not None and end is not None and reads > 1:
            figure.seconds_per_request = ((end - start) - (start - one)) / (reads - 1)
        out[name] = figure
    return out


PATHS = {("vda", "msix"): "MSI-X message from this process",
         ("vda", "intx"): "INTx (ISR read, level line)",
         ("vdb", "msix"): "irqfd (call fd to KVM)",
         ("vdb", "intx"): "relayed by this process as INTx"}


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
            counts: dict[str, int | None] = {"vda": own.stats["interrupts"],
                      "vdb": device.stats["call"] if mode == "intx" else None}
            if mode == "msix":
                assert device.stats["call"] == 0, "a call fd was relayed with MSI-X"
            run.disks = disk_figures(console.data.getvalue().decode(errors="replace"),
                                     console.stamps, mode, reads, counts)
        return run
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


# --- rows of `xinterface bench` ----------------------------------------------------------------

MODES = ("intx", "msix")
BENCH_READS = 30   # at 20-30 ms a read here, a second of reads per disk beside the boot
DISKS = {"vda": "blk", "vdb": "vhost_user_blk"}
Row = tuple[str, str, Callable[[], float], str | None]


def bench_paths() -> dict[str, str]:
    """The test kernel's paths as :func:`one_run` takes them, from the cache
    :func:`~.snapshot.linux_images` finds (never a build: that takes many minutes)."""
    kernel, initrd = linux_images()
    features = Path(kernel).parent / "features.json"
    if not features.is_file():
        raise LinuxUnavailable(f"no {features} beside {kernel} (the CPUID workarounds need it)")
    return {"vmlinux": kernel, "initramfs": initrd, "features": str(features)}


class Rounds:
    """One boot per mode per round: the mode's first row boots and keeps the run, the
    mode's other rows (the other disk, interrupts, exits) read that run, so every figure of a
    round comes from the same two boots."""

    def __init__(self, reads: int = BENCH_READS) -> None:
        self.reads = reads
        self.runs: dict[str, Run] = {}
        self._work: Path | None = None

    def _workdir(self) -> Path:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="xinterface-bench-msix-"))
            atexit.register(shutil.rmtree, self._work, True)
        return self._work

    def boot(self, mode: str) -> float:
        """Boot ``mode`` and give vda's µs per request."""
        self.runs.pop(mode, None)
        run = one_run(bench_paths(), mode, self.reads, self._workdir())
        for figure in run.disks.values():
            if figure.seconds_per_request is None or figure.reads < self.reads:
                raise RuntimeError(f"linux.pc {mode}: {figure.name}'s marks or reads are "
                                   f"missing (the run ended: {run.reason})")
        self.runs[mode] = run
        return self.us_per_request(mode, "vda")

    def _run(self, mode: str) -> Run:
        try:
            return self.runs[mode]
        except KeyError:
            raise RuntimeError(f"linux.pc {mode}: no boot in this round") from None

    def us_per_request(self, mode: str, disk: str) -> float:
        seconds = self._run(mode).disks[disk].seconds_per_request
        assert seconds is not None   # boot() keeps only runs with every mark
        return seconds * 1e6

    def interrupts_per_100(self, mode: str, disk: str) -> float:
        per = self._run(mode).disks[disk].interrupts_per_request
        assert per is not None
        return per * 100

    def mmio_exits(self, mode: str) -> float:
        return float(self._run(mode).exits.get("mmio", 0))


def figure_samples(quick: bool, rounds: Rounds | None = None) -> tuple[list[Row], list[str]]:
    """The suite's rows ``(name, unit, sample, reference)`` and notices: for each disk
    ``linux.pc.<disk>.read.<mode>`` (µs per request), ``....irqs`` (interrupts per 100
    requests, boot included) and ``linux.pc.read.<mode>.mmio_exits`` (per boot); each MSI-X
    row paired with its INTx row. None with ``--quick``, without the built test kernel or
    without qemu-storage-daemon (it serves vdb)."""
    name = "linux.pc.*"
    if quick:
        return [], [f"{name} skipped with --quick: a Linux boot per mode takes a minute"]
    try:
        bench_paths()
    except LinuxUnavailable as exc:
        return [], [f"{name} skipped: {exc}"]
    if shutil.which("qemu-storage-daemon") is None:
        return [], [f"{name} skipped: qemu-storage-daemon not found "
                    "(apt-get install qemu-system-x86)"]
    r = rounds if rounds is not None else Rounds()
    rows: list[Row] = []
    for mode in MODES:
        rows.append((f"linux.pc.blk.read.{mode}", "µs/request", partial(r.boot, mode), None))
    rows.append(("linux.pc.vhost_user_blk.read.intx", "µs/request",
                 partial(r.us_per_request, "intx", "vdb"), None))
    rows.append(("linux.pc.vhost_user_blk.read.msix", "µs/request",
                 partial(r.us_per_request, "msix", "vdb"), None))
    for disk, label in DISKS.items():
        for mode in MODES:
            rows.append((f"linux.pc.{label}.read.{mode}.irqs", "irqs/100 requests",
                         partial(r.interrupts_per_100, mode, disk), None))
    for mode in MODES:
        rows.append((f"linux.pc.read.{mode}.mmio_exits", "exits/boot",
                     partial(r.mmio_exits, mode), None))
    # Each MSI-X row against the INTx row of the same round.
    paired = [(n, u, s, n.replace(".msix", ".intx") if ".msix" in n else ref)
              for n, u, s, ref in rows]
    return paired, []


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
