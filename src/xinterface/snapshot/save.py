"""``snapshot(machine, path)``: a paused machine to a directory."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Any

from ..build import description
from ..errors import XInterfaceError
from ..kvm import state as kvm_state
from ..kvm import uapi
from ..kvm.system import Kvm
from ..runner.machine import Machine
from . import devices as found
from . import diff as dirty
from .format import encode, fail, read_manifest, write_manifest
from .layers import check_machine, memory_layers
from .memory_files import file_stamp, write_region


def complete_pending_io(machine: Machine) -> None:
    """Let KVM finish the instruction of each vCPU's last PIO/MMIO exit: it does that at the
    next ``KVM_RUN``, before it looks at ``immediate_exit`` (api.rst, "immediate_exit"), so a
    ``KVM_RUN`` with it set completes the instruction and returns ``EINTR`` at once. Without
    it the saved RIP would still point at the ``out`` the exit loop already served."""
    for loop in machine.vcpus:
        loop.vcpu.set_immediate_exit(True)
        with contextlib.suppress(InterruptedError, BlockingIOError):
            loop.vcpu.run()


def machine_record(machine: Machine) -> dict[str, Any]:
    vm = machine.vm
    assert vm.memory is not None
    return {"vcpus": len(machine.vcpus), "irqchip": vm.irqchip, "strict": vm.strict,
            "regions": [[r.gpa, r.size, r.readonly] for r in vm.memory.regions]}


def snapshot(machine: Machine, path: str | os.PathLike[str], *,
             diff: bool = False) -> dict[str, Any]:
    """Write ``machine`` (paused, or idle between runs) to the directory ``path`` (created;
    it must not hold a snapshot already). The machine can be resumed afterwards.

    ``diff``: write only the pages the guest wrote since this machine's last snapshot
    (:mod:`.diff`), which the restore of this one needs as well (``EINVAL`` if there was
    none).

    The machine is held paused (:meth:`~xinterface.Machine.hold`) until the snapshot is
    written. A machine :func:`xinterface.build.build` built records its description, which
    :func:`~xinterface.snapshot.restore_built` builds again.

    Refuses, before writing anything: a running machine (``EBUSY``), a device without
    ``save()``/``load()`` (``EOPNOTSUPP``, naming it). Returns the manifest's body.
    """
    directory = os.path.abspath(os.fspath(path))
    parent = dirty.last_snapshot(machine) if diff else None
    if diff and parent is None:
        raise fail(errno.EINVAL, "a diff snapshot needs an earlier snapshot of this machine",
                   machine)
    machine.vm.check_open()
    with contextlib.ExitStack() as stack:
        try:
            # Held to the end: no resume() or run() from another thread while it is read.
            stack.enter_context(machine.hold())
        except XInterfaceError:
            raise fail(errno.EBUSY, f"snapshot needs a paused machine; it is "
                       f"{machine.state.value}", machine) from None
        return _write(machine, directory, parent)


def _write(machine: Machine, directory: str, parent: str | None) -> dict[str, Any]:
    saved_devices = found.devices(machine)
    device_states = {key: dev.save() for key, dev in saved_devices.items()}
    vm = machine.vm
    assert vm.memory is not None
    with Kvm() as kvm:
        msrs = kvm.get_msr_index_list()
        xsave = bool(kvm.check_extension(uapi.KVM_CAP_XSAVE))
    pieces = kvm_state.vcpu_pieces(vm.irqchip, xsave)
    complete_pending_io(machine)
    vcpus = [encode(kvm_state.save_vcpu(loop.vcpu, pieces, msrs)) for loop in machine.vcpus]
    vm_state = encode(kvm_state.save_vm(vm.vmfd, vm.irqchip))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise fail(exc.errno or errno.EIO, f"snapshot {directory}: {exc.strerror}",
                   directory) from None
    if os.path.exists(os.path.join(directory, "manifest.json")):
        raise fail(errno.EEXIST, f"snapshot {directory} exists already", directory)
    parent_layers = None
    if parent is not None:
        parent_body = read_manifest(parent)
        parent_layers = memory_layers(parent, parent_body, check_machine(
            parent_body.get("machine"))[3])
        if len(parent_layers) != len(vm.memory.regions):
            raise fail(errno.EINVAL, f"the parent snapshot {parent} has another memory layout",
                       parent)
    memory = []
    for index, region in enumerate(vm.memory.regions):
        name = f"mem-{region.gpa:x}.bin"
        file = os.path.join(directory, name)
        entry: dict[str, Any] = {"gpa": region.gpa, "file": name}
        try:
            if parent_layers is None:
                write_region(region, file)
            else:
                entry["runs"] = dirty.changed_runs(region, parent_layers[index])
                entry["written"] = dirty.write_diff(region, entry["runs"], file)
        except OSError as exc:
            raise fail(exc.errno or errno.EIO, f"snapshot {file}: {exc.strerror}",
                       file) from None
        memory.append({**entry, **file_stamp(file)})
    spec = description(machine)
    body = {"machine": machine_record(machine), "pieces": [p.name for p in pieces],
            "spec": None if spec is None else spec.to_json(),
            "vcpu_state": vcpus, "vm_state": vm_state, "devices": device_states,
            "memory": memory, "parent": parent, "taken": time.time()}
    write_manifest(directory, body)
    dirty.remember(machine, directory)
    return body



