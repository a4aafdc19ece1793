"""virtio-blk with the device in another process, both ways round: one marked guest
(bench/blk_backends.py: modern virtio-pci, 4 KiB reads at a queue depth) on two VMMs, each
with three devices.

- Under QEMU (``vmm="qemu"``): QEMU's own ``virtio-blk-pci`` (``builtin``), and
  ``vhost-user-blk-pci`` on qemu-storage-daemon (``qsd``) or on ``xinterface serve blk``
  (``serve``): our backend against QEMU's.
- On our pc board (``vmm="xinterface"``, :func:`~xinterface.boards.attach_pc`): the
  in-process ``VirtioBlk`` (``builtin``, what ``--disk FILE`` makes), and a vhost-user disk
  (``--disk vhost-user=PATH``) on ``serve`` or ``qsd``: our frontend against QEMU's.

The guest, the disk image and the backend processes are the same in every row; the figure
is the guest's own span from its 'S' mark to its 'E' mark over the requests it made.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, cast

from ..boards.pc import attach_pc
from ..delivery import Delivery
from ..runner.machine import Machine
from ..spec import Disk, VhostUser
from .blk_backends import (
    ENTRY,
    MEMORY_MIB,
    STORAGE_DAEMON,
    guest,
    qemu_command,
    start_backend,
    stop_backend,
)
from .marks import Marks, run_marked
from .peer import BOOT_GPA, QEMU
from .virtio_blk import GOOD_EXIT, marked_span, write_disk

VMMS = ("qemu", "xinterface")
DEVICES = ("builtin", "qsd", "serve")
TIMEOUT = 600.0


def _own(boot: bytes, disk: Path, socket: Path | None, doorbells: Delivery) -> float:
    """Seconds from 'S' to 'E' on our pc board: the in-process disk on ``disk``, or (with
    ``socket``) a vhost-user disk on the backend listening there."""
    marks = Marks()
    with Machine(memory=MEMORY_MIB << 20, irqchip=True,
                 console=cast(BinaryIO, marks)) as machine:
        if socket is None:
            attach_pc(machine, disks=[Disk(str(disk))], doorbells=doorbells)
        else:
            attach_pc(machine, vhost_user=[VhostUser("blk", str(socket))])
        machine.load_flat(boot, gpa=BOOT_GPA, mode="protected")
        machine.set_entry(ENTRY)
        result = machine.run(timeout=TIMEOUT)
    if (result.reason, result.exit_code) != ("exit", GOOD_EXIT):
        raise RuntimeError(f"the virtio-blk guest on xinterface ended with {result.reason} "
                           f"{result.exit_code}: {bytes(marks.text)!r}")
    return marked_span(marks, "xinterface", result.exit_code)


def _qemu(disk: Path | None, socket: Path | None) -> float:
    marks = Marks()
    status, stderr = run_marked(qemu_command(disk=disk, socket=socket), marks, TIMEOUT)
    if status != GOOD_EXIT:
        raise RuntimeError(f"the virtio-blk guest under QEMU ended with status {status}: "
                           f"{stderr[-300:]} {bytes(marks.text)!r}")
    return marked_span(marks, "QEMU", status)


def seconds(depth: int, rounds: int, vmm: str, device: str, *,
            doorbells: Delivery = Delivery.SYNC) -> float:
    """Seconds the guest's ``rounds`` rounds of ``depth`` reads take on ``vmm``
    (:data:`VMMS`) with ``device`` (:data:`DEVICES`). ``doorbells``: our in-process disk's
    doorbell delivery (a vhost-user disk's doorbell is the backend's kick eventfd)."""
    if vmm not in VMMS:
        raise ValueError(f"vmm {vmm!r} is not one of {', '.join(VMMS)}")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    with tempfile.TemporaryDirectory(prefix="xinterface-vublk-") as tmp:
        boot = guest(depth, rounds)
        disk = write_disk(Path(tmp) / "disk.img", boot)
        if device == "builtin":
            return _qemu(disk, None) if vmm == "qemu" else _own(boot, disk, None, doorbells)
        socket = Path(tmp) / "blk.sock"
        proc = start_backend(device, disk, socket)
        try:
            return _qemu(None, socket) if vmm == "qemu" else _own(boot, disk, socket,
                                                                  doorbells)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (backend {device})") from None
        finally:
            stop_backend(proc)


def request_ns(depth: int, rounds: int, vmm: str, device: str) -> float:
    """ns per 4 KiB read at queue depth ``depth`` over ``rounds`` rounds (see
    :func:`seconds`)."""
    return seconds(depth, rounds, vmm, device) * 1e9 / (depth * rounds)


Row = tuple[str, Callable[[], float], str | None]


def figure_samples(rounds: dict[int, int]) -> tuple[list[Row], list[str]]:
    """The suite's rows, ``vhost_user.<vmm>.qd<depth>.<device>`` for each queue depth of
    ``rounds`` (depth -> rounds per sample), each with the row it is paired with: QEMU on
    qemu-storage-daemon for every one of ours (the backend's target, and the frontend's),
    QEMU's own virtio-blk for qemu-storage-daemon. Rows whose program is not installed are
    left out, with a notice."""
    notices: list[str] = []
    have_qemu = shutil.which(QEMU) is not None
    have_qsd = shutil.which(STORAGE_DAEMON) is not None
    if not have_qemu:
        notices.append(f"vhost_user.qemu.* skipped: {QEMU} not found "
                       "(apt-get install qemu-system-x86)")
    if not have_qsd:
        notices.append(f"vhost_user.*.qsd skipped: {STORAGE_DAEMON} not found "
                       "(apt-get install qemu-system-common)")
    rows: list[Row] = []
    for depth, n in rounds.items():
        def name(vmm: str, device: str, depth: int = depth) -> str:
            return f"vhost_user.{vmm}.qd{depth}.{device}"

        reference = None
        if have_qemu:
            rows.append((name("qemu", "builtin"),
                         partial(request_ns, depth, n, "qemu", "builtin"), None))
            reference = name("qemu", "builtin")
            if have_qsd:
                rows.append((name("qemu", "qsd"),
                             partial(request_ns, depth, n, "qemu", "qsd"), reference))
                reference = name("qemu", "qsd")
            rows.append((name("qemu", "serve"),
                         partial(request_ns, depth, n, "qemu", "serve"), reference))
        for device in ("builtin", "serve", "qsd"):
            if device != "qsd" or have_qsd:
                rows.append((name("xinterface", device),
                             partial(request_ns, depth, n, "xinterface", device), reference))
    return rows, notices
