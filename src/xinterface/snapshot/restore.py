"""``restore(path)``: the machine of a snapshot, built again, state loaded, memory mapped."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from ..kvm import state as kvm_state
from ..runner.machine import Machine
from . import devices as found
from .diff import remember
from .format import decode, fail, read_manifest
from .layers import Layer, check_machine, memory_layers
from .memory_files import map_private


def restore(path: str | os.PathLike[str], *, console: BinaryIO | None = None,
            attach: Callable[[Machine], object] | None = None) -> Machine:
    """The machine saved in ``path``, paused at the instruction it was saved at: ``run()``
    continues it. ``attach(machine)`` attaches the devices the saved machine had beyond the
    debug ports (as it did before the snapshot); their saved state is then loaded into them.
    Memory is the snapshot's files mapped copy-on-write, so any number of restores of one
    snapshot run side by side. Anything wrong with the snapshot is one
    :class:`~xinterface.snapshot.SnapshotError` line, raised before a vCPU runs.
    """
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
    machine = Machine(memory=[(g, s) for g, s, ro in regions if not ro], vcpus=vcpus,
                      irqchip=irqchip, strict=strict, console=console)
    try:
        if attach is not None:
            attach(machine)
        load_into(machine, pieces, states, vm_state, layers, saved)
        remember(machine, directory)  # a diff of it is a diff of this snapshot
    except BaseException:
        machine.close()
        raise
    return machine


def load_into(machine: Machine, pieces: tuple[kvm_state.Piece, ...],
              states: list[dict[str, bytes]], vm_state: dict[str, bytes],
              layers: list[list[Layer]], saved: dict[str, Any]) -> None:
    """Load a snapshot's state into a machine built from its description, not yet run."""
    memory = machine.memory
    assert memory is not None
    if len(memory.regions) != len(layers):
        raise fail(errno.EINVAL, f"the snapshot has {len(layers)} memory regions, the machine "
                   f"built from it {len(memory.regions)}")
    present = found.devices(machine)
    missing = sorted(set(saved) - set(present))
    extra = sorted(set(present) - set(saved))
    if missing or extra:
        raise fail(errno.EINVAL, "the restored machine's devices differ from the snapshot's: "
                   f"missing {missing or 'none'}, not in the snapshot {extra or 'none'}")
    for key, device in present.items():
        state = saved[key]
        if not isinstance(state, dict):
            raise fail(errno.EINVAL, f"manifest: state of {key} is not a table")
        device.load(state)
    for region, stack in zip(memory.regions, layers, strict=True):
        for file, size, runs in stack:  # the full snapshot first, then each diff over it
            map_private(region, file, size, runs)
    # The VM's state before the vCPUs': KVM_SET_CLOCK and the irqchip do not depend on them,
    # and a LAPIC restored later reads the IOAPIC routing as saved.
    kvm_state.restore_vm(machine.vm.vmfd, machine.vm.irqchip, vm_state)
    for loop, state in zip(machine.vcpus, states, strict=True):
        kvm_state.restore_vcpu(loop.vcpu, pieces, state)
