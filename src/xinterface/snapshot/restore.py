"""``restore(path)``: the machine of a snapshot, built again, state loaded, memory mapped."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple, TextIO

from ..errors import XInterfaceError
from ..kvm import state as kvm_state
from ..runner.machine import Machine
from . import devices as found
from .diff import remember
from .format import SnapshotError, decode, fail, read_manifest
from .layers import Layer, check_machine, memory_layers
from .memory_files import map_private


class Saved(NamedTuple):
    """A snapshot's manifest, read and checked; nothing built yet."""

    directory: str
    body: dict[str, Any]
    vcpus: int
    irqchip: bool
    strict: bool
    regions: list[tuple[int, int, bool]]
    pieces: tuple[kvm_state.Piece, ...]
    states: list[dict[str, bytes]]
    vm_state: dict[str, bytes]
    layers: list[list[Layer]]
    devices: dict[str, Any]


def read_saved(path: str | os.PathLike[str]) -> Saved:
    """The manifest of ``path`` and its memory files, checked (:class:`SnapshotError`)."""
    directory = os.path.abspath(os.fspath(path))
    body = read_manifest(directory)
    vcpus, irqchip, strict, regions = check_machine(body.get("machine"))
    pieces_named = body.get("pieces")
    known = {p.name: p for p in (*kvm_state.VCPU_PIECES, kvm_state.FPU)}
    if not isinstance(pieces_named, list) or any(n not in known for n in pieces_named):
        raise fail(errno.EINVAL, f"manifest: unknown vCPU state pieces {pieces_named!r}")
    pieces = tuple(known[n] for n in pieces_named)
    vcpu_states = body.get("vcpu_state")
    if not isinstance(vcpu_states, list) or len(vcpu_states) != vcpus:
        raise fail(errno.EINVAL, "manifest: vcpu_state does not list every vCPU")
    states = [decode(s, f"vcpu_state[{i}]") for i, s in enumerate(vcpu_states)]
    vm_state = decode(body.get("vm_state"), "vm_state")
    layers = memory_layers(directory, body, regions)
    saved = body.get("devices")
    if not isinstance(saved, dict):
        raise fail(errno.EINVAL, "manifest: devices is not a table")
    return Saved(directory, body, vcpus, irqchip, strict, regions, pieces, states, vm_state,
                 layers, saved)


def new_machine(saved: Saved, *, console: BinaryIO | None = None,
                trace: TextIO | None = None, cpu: str | None = None) -> Machine:
    """A machine of the snapshot's layout: its RAM regions, then its read-only ones (a
    firmware's ROM), whose bytes the memory files bring back as they do RAM's."""
    machine = Machine(memory=[(g, s) for g, s, ro in saved.regions if not ro],
                      vcpus=saved.vcpus, irqchip=saved.irqchip, strict=saved.strict,
                      console=console, trace=trace, cpu=cpu)
    try:
        assert machine.memory is not None
        for gpa, size, readonly in saved.regions:
            if readonly:
                machine.memory.add_region(gpa, size, readonly=True)
    except BaseException:
        machine.close()
        raise
    return machine


def restore(path: str | os.PathLike[str], *, console: BinaryIO | None = None,
            attach: Callable[[Machine], object] | None = None) -> Machine:
    """The machine saved in ``path``, paused at the instruction it was saved at: ``run()``
    continues it. ``attach(machine)`` attaches the devices the saved machine had beyond the
    debug ports (as it did before the snapshot); their saved state is then loaded into them.
    Memory is the snapshot's files mapped copy-on-write, so any number of restores of one
    snapshot run side by side. Anything wrong with the snapshot is one
    :class:`~xinterface.snapshot.SnapshotError` line, raised before a vCPU runs.
    """
    saved = read_saved(path)
    machine = new_machine(saved, console=console)
    try:
        if attach is not None:
            attach(machine)
        finish(machine, saved)
    except BaseException:
        machine.close()
        raise
    return machine


def finish(machine: Machine, saved: Saved) -> None:
    """Load the snapshot into ``machine``, its devices attached; the machine remembers the
    snapshot as the parent of its next diff."""
    load_into(machine, saved.pieces, saved.states, saved.vm_state, saved.layers,
              saved.devices)
    remember(machine, saved.directory)  # a diff of it is a diff of this snapshot


def load_into(machine: Machine, pieces: tuple[kvm_state.Piece, ...],
              states: list[dict[str, bytes]], vm_state: dict[str, bytes],
              layers: list[list[Layer]], saved: dict[str, Any]) -> None:
    """Load a snapshot's state into a machine built from its description, not yet run."""
    memory = machine.memory
    assert memory is not None
    if len(memory.regions) != len(layers):
        raise fail(errno.EINVAL, f"the snapshot has {len(layers)} memory regions, the machine "
                   f"built from it {len(memory.regions)}")
    present = found.devices(machine, "restore")
    missing = sorted(set(saved) - set(present))
    extra = sorted(set(present) - set(saved))
    if missing or extra:
        raise fail(errno.EINVAL, "the restored machine's devices differ from the snapshot's: "
                   f"missing {missing or 'none'}, not in the snapshot {extra or 'none'}")
    for key, device in present.items():
        state = saved[key]
        if not isinstance(state, dict):
            raise fail(errno.EINVAL, f"manifest: state of {key} is not a table")
        try:
            device.load(state)
        except XInterfaceError as exc:
            # The device's own words (they name the field), and which device it is.
            words = str(exc.strerror).rsplit(" (", 1)[0]
            raise SnapshotError(exc.errno or errno.EINVAL, f"saved state of {key}: {words}",
                                argument=exc.argument, value=exc.value) from None
    for region, stack in zip(memory.regions, layers, strict=True):
        for file, size, runs in stack:  # the full snapshot first, then each diff over it
            map_private(region, file, size, runs)
    # The VM's state before the vCPUs': KVM_SET_CLOCK and the irqchip do not depend on them,
    # and a LAPIC restored later reads the IOAPIC routing as saved.
    kvm_state.restore_vm(machine.vm.vmfd, machine.vm.irqchip, vm_state)
    for loop, state in zip(machine.vcpus, states, strict=True):
        kvm_state.restore_vcpu(loop.vcpu, pieces, state)
    # Everything is back: a device may now serve what its driver had made available and
    # it had not taken (a virtio queue's doorbell rang before the snapshot).
    for device in present.values():
        restored = getattr(device, "restored", None)
        if restored is not None:
            restored()
