"""The benchmark suite: every figure sampled in rounds, interleaved, so ratios hold on a noisy
machine; medians with p10-p90 and the ratio of each figure to its C floor."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .. import accel
from .._version import __version__
from ..delivery import Delivery
from .floor import FloorUnavailable, build_floor, run_floor
from .memory_ops import sample as memory_sample
from .msix_linux import figure_samples as msix_figure_samples
from .net import figure_samples as net_figure_samples
from .paths import dispatch_cost, latency, write_cost
from .peer import QEMU, own_write_cost, qemu_write_cost
from .snapshot import (
    LinuxUnavailable,
    diff_kib,
    linux_boot_to_init_ms,
    linux_images,
    linux_restore_to_init_ms,
    process_restore_ms,
    restore_ms,
    snapshot_mib,
)
from .startup import own_start_us, qemu_start_us
from .vhost_user_blk import figure_samples as vhost_user_figure_samples
from .virtio_blk import request_ns
from .virtio_notify import notify_cost

Sample = Callable[[], float]
POLL = 200e-6  # the POSTED poller's period in the posted.* figures


@dataclass
class Figure:
    name: str
    unit: str
    sample: Sample
    floor: str | None = None
    samples: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        data = sorted(self.samples)
        return data[min(len(data) - 1, max(0, round(q * (len(data) - 1))))]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _floor_sample(mode: str, count: int) -> Sample:
    binary = build_floor()
    return lambda: run_floor(mode, count, binary=binary).ns_per_write


def python_loop_write_cost(count: int) -> float:
    """``sync.pio.1`` on the Python loop, from a child process with the compiled loop turned
    off (the loop is chosen once per process), for a ratio in the same run."""
    env = {**os.environ, accel.PURE_PYTHON_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from xinterface.bench.paths import write_cost; "
         "print(write_cost(int(sys.argv[1])))", str(count)],
        env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the Python-loop benchmark failed: {done.stderr.strip()[-300:]}")
    return float(done.stdout)


def figures(quick: bool, scale: float = 1.0,
            peers: tuple[str, ...] = ()) -> tuple[list[Figure], list[str]]:
    """The suite, and notices for what had to be skipped. ``peers``: ``("qemu",)`` adds the
    same boot-sector guest on QEMU and on xinterface."""
    n_sync = max(50, int((5_000 if quick else 40_000) * scale))
    n_fast = max(200, int((20_000 if quick else 200_000) * scale))
    rounds = max(10, int((100 if quick else 500) * scale))
    mem = max(20, int((200 if quick else 2_000) * scale))
    notices: list[str] = []
    out: list[Figure] = []
    floors = {"floor.pio.1": ("pio", n_sync), "floor.mmio.4": ("mmio", n_sync),
              "floor.coalesced.pio.1": ("coalesced-pio", n_fast),
              "floor.coalesced.mmio.4": ("coalesced-mmio", n_fast),
              "floor.eventfd.pio.1": ("eventfd-pio", n_fast)}
    for name, (mode, count) in floors.items():
        try:
            out.append(Figure(name, "ns/write", _floor_sample(mode, count)))
        except FloorUnavailable as exc:
            notices.append(f"{name} skipped: {exc}")
    have = {f.name for f in out}

    def floor(name: str) -> str | None:
        return name if name in have else None

    out += [
        Figure("sync.pio.1", "ns/write", partial(write_cost, n_sync), floor("floor.pio.1")),
    ]
    if accel.LOOP == "compiled":
        out.append(Figure("sync.pio.1.python", "ns/write",
                          partial(python_loop_write_cost, n_sync), floor("floor.pio.1")))
    out += [
        Figure("sync.pio.4", "ns/write", partial(write_cost, n_sync, size=4),
               floor("floor.pio.1")),
        Figure("sync.mmio.4", "ns/write", partial(write_cost, n_sync, size=4, mmio=True),
               floor("floor.mmio.4")),
        Figure("sync.mmio.8", "ns/write", partial(write_cost, n_sync, size=8, mmio=True),
               floor("floor.mmio.4")),
        Figure("posted.pio.1", "ns/write",
               partial(write_cost, n_fast, delivery=Delivery.POSTED, poll=POLL),
               floor("floor.coalesced.pio.1")),
        Figure("posted.mmio.4", "ns/write",
               partial(write_cost, n_fast, size=4, mmio=True, delivery=Delivery.POSTED,
                       poll=POLL), floor("floor.coalesced.mmio.4")),
        Figure("eventfd.pio.1", "ns/write", partial(write_cost, n_fast,
                                                    delivery=Delivery.EVENTFD),
               floor("floor.eventfd.pio.1")),
        Figure("sync.latency", "ns", partial(latency, rounds, Delivery.SYNC)),
        Figure("posted.latency", "ns", partial(latency, rounds, Delivery.POSTED, POLL)),
        Figure("eventfd.latency", "ns", partial(latency, rounds, Delivery.EVENTFD)),
    ]
    # One virtio-mmio queue, the same guest: the doorbell alone (an empty queue), and a
    # request round trip (a new buffer, the doorbell, the guest waiting for it to be used).
    out += [
        Figure("virtio.notify.sync", "ns/doorbell", partial(notify_cost, n_sync),
               floor("floor.mmio.4")),
        Figure("virtio.notify.posted", "ns/doorbell",
               partial(notify_cost, n_sync, Delivery.POSTED, poll=POLL),
               floor("floor.coalesced.mmio.4")),
        Figure("virtio.notify.eventfd", "ns/doorbell",
               partial(notify_cost, n_fast, Delivery.EVENTFD), floor("floor.eventfd.pio.1")),
        Figure("virtio.request.sync", "ns/request",
               partial(notify_cost, max(50, n_sync // 4), request=True)),
        Figure("virtio.request.eventfd", "ns/request",
               partial(notify_cost, max(50, n_sync // 4), Delivery.EVENTFD, request=True)),
    ]
    # virtio-blk behind virtio-pci, one boot-sector guest reading 4 KiB at queue depth 1 and
    # 32; with --peer qemu, the same bytes on QEMU's virtio-blk-pci are the reference.
    blk_rounds = {1: max(20, int((300 if quick else 3_000) * scale)),
                  32: max(2, int((20 if quick else 200) * scale))}
    with_qemu = "qemu" in peers and shutil.which(QEMU) is not None
    for depth, blk_n in blk_rounds.items():
        reference = None
        if with_qemu:
            reference = f"qemu.virtio.blk.qd{depth}"
            out.append(Figure(reference, "ns/request",
                              partial(request_ns, depth, blk_n, peer=True)))
        for doorbells in (Delivery.SYNC, Delivery.EVENTFD):
            out.append(Figure(f"virtio.blk.qd{depth}.{doorbells.value}", "ns/request",
                              partial(request_ns, depth, blk_n, doorbells=doorbells), reference))
        if accel.DATA_PATH == "compiled":
            # The Python data path in the same run, for the ratio.
            out.append(Figure(f"virtio.blk.qd{depth}.sync.python", "ns/request",
                              partial(request_ns, depth, blk_n, python_path=True), reference))
    # --peer vhost-user: the modern-virtio-pci blk guest (bench/vhost_user_blk.py) under QEMU
    # and on our pc board, each with its own virtio-blk and with vhost-user-blk on
    # qemu-storage-daemon and on `xinterface serve blk`: each of ours against QEMU's.
    if "vhost-user" in peers:
        vu_figs, vu_notices = vhost_user_figure_samples(blk_rounds)
        notices += vu_notices
        out += [Figure(name, "ns/request", sample, reference)
                for name, sample, reference in vu_figs]
    for n in (1, 100, 10_000, 100_000):
        out.append(Figure(f"bus.events.{n}", "ns/write",
                          partial(write_cost, n_sync, registered=n), floor("floor.pio.1")))
    for n in (1, 100, 10_000, 100_000):
        out.append(Figure(f"bus.dispatch.{n}", "ns", partial(dispatch_cost, n, mem * 50),
                          "bus.dispatch.1" if n > 1 else None))
    for size, label in ((8, "8"), (4096, "4k"), (1 << 20, "1m")):
        number = mem if size < 1 << 20 else max(5, mem // 50)
        out += [
            Figure(f"floor.slice_read.{label}", "ns", partial(memory_sample, "slice_read",
                                                             size, number)),
            Figure(f"floor.slice_write.{label}", "ns", partial(memory_sample, "slice_write",
                                                              size, number)),
            Figure(f"memory.copy_from.{label}", "ns", partial(memory_sample, "copy_from",
                                                             size, number),
                   f"floor.slice_read.{label}"),
            Figure(f"memory.copy_to.{label}", "ns", partial(memory_sample, "copy_to",
                                                           size, number),
                   f"floor.slice_write.{label}"),
        ]
    if "qemu" in peers:
        if shutil.which(QEMU) is None:
            notices.append(f"qemu.pio.1 skipped: {QEMU} not found "
                           "(apt-get install qemu-system-x86)")
        else:
            large = max(2_000, int((200_000 if quick else 500_000) * scale))
            out += [
                Figure("qemu.pio.1", "ns/write",
                       partial(qemu_write_cost, max(1, large // 100), large),
                       floor("floor.pio.1")),
                # Compared with QEMU itself: the same binary, the same device, one exit each.
                Figure("bootsector.pio.1", "ns/write", partial(own_write_cost, n_sync),
                       "qemu.pio.1"),
                # Whole processes, exec to exit: the same few instructions as QEMU's firmware
                # and as `xinterface run`'s image.
                Figure("qemu.startup", "µs/process", qemu_start_us),
            ]
    out.append(Figure("startup.run", "µs/process", own_start_us,
                      "qemu.startup" if any(f.name == "qemu.startup" for f in out) else None))
    for label in ("64m", "1g"):
        out += [Figure(f"snapshot.restore.{label}", "ms", partial(restore_ms, label)),
                Figure(f"snapshot.restore_process.{label}", "ms/process",
                       partial(process_restore_ms, label)),
                Figure(f"snapshot.size.{label}", "MiB", partial(snapshot_mib, label))]
    # A diff compares the whole region with its parent's files: a 1 GiB one takes about a
    # minute on a loaded host (docs/snapshot.md), so only the small guest is a figure.
    out.append(Figure("snapshot.diff_size.64m", "KiB", partial(diff_kib, "64m")))
    # The Linux test kernel, whole processes: a boot to /init's marker, and a restore of a
    # snapshot taken there (the ratio pairs each round's restore with its boot).
    if quick:
        notices.append("snapshot.linux.* skipped with --quick: a Linux boot takes a minute")
    else:
        try:
            linux_images()
        except LinuxUnavailable as exc:
            notices.append(f"snapshot.linux.* skipped: {exc}")
        else:
            out += [Figure("snapshot.linux.boot_to_init", "ms/process", linux_boot_to_init_ms),
                    Figure("snapshot.linux.restore_to_init", "ms/process",
                           linux_restore_to_init_ms, "snapshot.linux.boot_to_init")]
    # Linux on pc reading its disks, with MSI-X and with INTx (pci=nomsi): one boot per mode
    # per round, each MSI-X row over the INTx row of the same round.
    linux_figs, linux_notices = msix_figure_samples(quick)
    notices += linux_notices
    out += [Figure(name, unit, sample, reference)
            for name, unit, sample, reference in linux_figs]
    net_figs, net_notices = net_figure_samples(quick, scale, peers)
    notices += net_notices
    out += [Figure(name, "ns/packet", sample, reference)
            for name, sample, reference in net_figs]
    out += [
        Figure("floor.slice_view", "ns", partial(memory_sample, "slice_view", 4096, mem)),
        Figure("memory.vmap", "ns", partial(memory_sample, "vmap", 4096, mem),
               "floor.slice_view"),
    ]
    return out, notices


def run_suite(figs: list[Figure], repeats: int,
              progress: Callable[[str], None] = lambda name: None) -> None:
    """``repeats`` rounds; each round samples every figure once, in order."""
    for _ in range(repeats):
        for fig in figs:
            progress(fig.name)
            fig.samples.append(fig.sample())


def machine_info() -> dict[str, object]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            nested = " hypervisor" in f.read()
    except OSError:
        nested = False
    kvm_module = next((m for m in ("kvm_pvm", "kvm_intel", "kvm_amd")
                       if os.path.exists(f"/sys/module/{m}")), "unknown")
    return {"cpu": cpu, "kernel": platform.release(), "nested": nested,
            "kvm_module": kvm_module, "cpus": os.cpu_count(),
            "python": platform.python_version(), "exit_loop": accel.LOOP,
            "data_path": accel.DATA_PATH,
            "host": platform.node(), "commit": _commit(), "version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _commit() -> str:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), so a figure names the
    code it measured; ``""`` for an installed package outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def paired_ratio(figure: Figure, floor: Figure) -> float | None:
    """The median over rounds of figure / floor within each round: a machine whose load
    changes from round to round (other tenants) moves both sides of each ratio alike.
    Rounds whose floor came out non-positive (QEMU's start-up jitter at tiny sizes) are left
    out; None if that leaves none."""
    pairs = [a / b for a, b in zip(figure.samples, floor.samples, strict=True) if b > 0]
    return statistics.median(pairs) if pairs else None


def results(figs: list[Figure]) -> list[dict[str, object]]:
    by_name = {f.name: f for f in figs}
    out: list[dict[str, object]] = []
    for f in figs:
        ratio = paired_ratio(f, by_name[f.floor]) if f.floor else None
        out.append({"name": f.name, "unit": f.unit, "median": f.median,
                    "p10": f.quantile(0.1), "p90": f.quantile(0.9),
                    "ratio_to_floor": ratio, "floor": f.floor, "samples": len(f.samples)})
    return out
