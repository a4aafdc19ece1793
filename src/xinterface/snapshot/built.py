"""``restore_built(path)``: a machine a description built (:func:`xinterface.build.build`),
built again from the description its snapshot recorded, its devices' state loaded.

Nothing is loaded from the firmware or kernel files: memory and vCPUs come from the
snapshot. What the description names outside the snapshot must still be there, checked
before anything is built: each disk image (its device checks the size when its state is
loaded) and each TAP (a clone is given its own with ``taps``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from ..build import Built, attach_devices, describe
from ..devices.output import Output
from ..errors import XInterfaceError
from ..runner.machine import Machine
from ..spec import MachineSpec
from .format import fail
from .restore import Saved, finish, new_machine, read_saved


def recorded_spec(saved: Saved, taps: Sequence[str] | None = None) -> MachineSpec:
    """The description the snapshot recorded, its TAPs replaced by ``taps`` (one per
    network interface, in order) if given, checked against what is on this host."""
    data = saved.body.get("spec")
    if data is None:
        raise fail(errno.EINVAL, f"snapshot {saved.directory} records no machine description "
                   "(it was not built by xinterface.build); restore it with "
                   "restore(path, attach=...)", saved.directory)
    try:
        spec = MachineSpec.from_json(data)
    except XInterfaceError as exc:
        words = str(exc.strerror).rsplit(" (", 1)[0]
        raise fail(errno.EINVAL, f"snapshot {saved.directory}: its description: {words}",
                   exc.argument) from None
    if taps is not None:
        taps = list(taps)
        if len(taps) != len(spec.nets) or not all(isinstance(t, str) and t for t in taps):
            raise XInterfaceError(errno.EINVAL, f"taps: {len(spec.nets)} TAP names needed "
                                  f"(one per network interface), got {taps!r}",
                                  argument="taps", value=taps)
        spec = spec._replace(nets=tuple(n._replace(tap=t)
                                        for n, t in zip(spec.nets, taps, strict=True)))
    if spec.vhost_user:
        raise fail(errno.EOPNOTSUPP, f"snapshot {saved.directory}: vhost-user devices cannot "
                   "be restored (their state is their backend's, and a restored machine's "
                   "memory is its snapshot's files mapped privately, which no backend can "
                   "map)", saved.directory)
    for i, disk in enumerate(spec.disks):
        if not os.path.isfile(disk.path):
            raise fail(errno.ENOENT, f"snapshot {saved.directory}: disks[{i}]'s image "
                       f"{disk.path} is missing", disk.path)
    for i, net in enumerate(spec.nets):
        # Opening a TAP that does not exist would create one (TUNSETIFF): look first, in
        # this thread's network namespace (sysfs shows the one it was mounted in).
        try:
            socket.if_nametoindex(net.tap)
        except OSError:
            raise fail(errno.ENOENT, f"snapshot {saved.directory}: nets[{i}]'s TAP "
                       f"{net.tap} does not exist (a clone needs a TAP of its own: taps=)",
                       net.tap) from None
    return spec


def restore_built(path: str | os.PathLike[str], *, console: BinaryIO | None = None,
                  debugcon: Output | None = None, serial: Output | None = None,
                  trace: TextIO | None = None,
                  taps: Sequence[str] | None = None) -> tuple[Machine, Built]:
    """The machine saved in ``path``, built again from the description its snapshot
    recorded, paused at the saved instruction (``run()`` continues it), and what was
    attached (``Built.feed`` types into its console; ``Built.kernel`` is None).

    ``console``, ``trace``: as :func:`xinterface.build.build_machine`'s; ``debugcon``,
    ``serial``: as :func:`xinterface.build.build`'s. ``taps``: the TAP of each network
    interface in order, instead of the recorded ones (each clone needs its own). Anything
    wrong (the snapshot, a missing disk image or TAP) is one
    :class:`~xinterface.snapshot.SnapshotError` line, raised before anything runs.
    """
    saved = read_saved(path)
    spec = recorded_spec(saved, taps)
    machine = new_machine(saved, console=console, trace=trace, cpu=spec.cpu)
    try:
        built = attach_devices(spec, machine, debugcon=debugcon, serial=serial)
        finish(machine, saved)
        describe(machine, spec)
    except BaseException:
        machine.close()
        raise
    return machine, built
