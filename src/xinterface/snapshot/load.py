"""``load(machine, path)``: a snapshot loaded into a machine that exists, in place (QEMU's
``loadvm``/``snapshot-load``), for a monitor: the machine must be paused or idle, and of the
snapshot's shape (memory layout, vCPUs, irqchip, devices)."""

from __future__ import annotations

import contextlib
import errno
import os

from ..errors import XInterfaceError
from ..runner.machine import Machine
from .format import fail
from .restore import finish, read_saved
from .save import complete_pending_io


def load(machine: Machine, path: str | os.PathLike[str]) -> None:
    """Put the state saved in ``path`` into ``machine``, which then goes on from the saved
    instruction when resumed (or run). Everything that can be checked before a change is
    (the manifest, the memory files, the layout, the set of devices: one
    :class:`~xinterface.snapshot.SnapshotError` line, nothing changed); a device refusing
    its saved state after others took theirs leaves the machine's state mixed, as a failed
    ``loadvm`` leaves QEMU's: load a good snapshot before going on."""
    saved = read_saved(path)
    memory = machine.memory
    assert memory is not None
    layout = [(r.gpa, r.size, r.readonly) for r in memory.regions]
    if (layout != saved.regions or saved.vcpus != len(machine.vcpus)
            or saved.irqchip != machine.vm.irqchip):
        raise fail(errno.EINVAL, f"snapshot {saved.directory} is of another machine (memory "
                   "layout, vCPUs or irqchip differ)", saved.directory)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(machine.hold())
        except XInterfaceError:
            raise fail(errno.EBUSY, f"loading a snapshot needs a paused machine; it is "
                       f"{machine.state.value}", machine) from None
        # A vCPU parked after a PIO/MMIO exit has that instruction still to complete at its
        # next KVM_RUN (api.rst, "immediate_exit"): completed now, it cannot land on the
        # loaded state (a loaded RIP equal to it would skip an instruction).
        complete_pending_io(machine)
        finish(machine, saved)
