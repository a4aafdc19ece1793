"""The builder: a machine description (:mod:`xinterface.spec`) made into a machine.

Every front end builds the same way: :func:`build_machine` makes the VM and its vCPUs, the
caller makes the outputs that need the machine (a console that stops it, a watcher for a
line), and :func:`build` attaches the board chosen by name and loads what it boots. A restore
(:func:`xinterface.snapshot.restore_built`) does the same from the description a snapshot
recorded, with :func:`attach_devices` only.

Boards are imported when one is built: a machine without a board (``xinterface run``) starts
without loading them (docs/performance.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, TextIO

from .spec import Boot, MachineSpec

if TYPE_CHECKING:
    from .boards.platform import Platform
    from .devices.output import Output
    from .loader.linux import LoadedKernel
    from .runner.machine import Machine


# The description each machine was built from, for a snapshot to record (:func:`description`).
_described: weakref.WeakKeyDictionary[Machine, MachineSpec] = weakref.WeakKeyDictionary()


class Built(NamedTuple):
    """What :func:`build` attached: the board's devices (None without a board), where typed
    input goes (the virtio-console if there is one, else COM1; None without a UART), and the
    kernel loaded, if the description boots one."""

    platform: Platform | None
    feed: Callable[[bytes], None] | None
    kernel: LoadedKernel | None


def build_machine(spec: MachineSpec, *, console: BinaryIO | None = None,
                  trace: TextIO | None = None) -> Machine:
    """The VM of ``spec`` (validated first), its debug console writing to ``console`` and
    its I/O traced to ``trace``; the caller closes it (``with``)."""
    spec.validate()
    from .runner.machine import Machine

    return Machine(memory=spec.memory, vcpus=spec.vcpus, irqchip=spec.irqchip,
                   strict=spec.strict, cpu=spec.cpu, console=console, trace=trace)


def build(spec: MachineSpec, machine: Machine, *, debugcon: Output | None = None,
          serial: Output | None = None) -> Built:
    """Attach ``spec``'s devices to ``machine`` (from :func:`build_machine`; its ``close()``
    ends them) and load its firmware or kernel. ``debugcon`` and ``serial`` are where the
    firmware's debug console and COM1 (and a virtio-console) write. The machine remembers
    ``spec`` (:func:`description`): a snapshot of it records it."""
    spec.validate()
    boot = spec.boot
    if boot.firmware is not None:
        machine.load_firmware(boot.firmware)
    built = attach_devices(spec, machine, debugcon=debugcon, serial=serial)
    if boot.kernel is not None and built.platform is not None:
        built = built._replace(kernel=_load_kernel(machine, built.platform, boot))
    describe(machine, spec)
    return built


def description(machine: Machine) -> MachineSpec | None:
    """The description :func:`build` built ``machine`` from, None if it was not."""
    return _described.get(machine)


def describe(machine: Machine, spec: MachineSpec) -> None:
    """Remember ``spec`` as ``machine``'s description: a machine a restore built from a
    recorded one is described by it, as if :func:`build` had built it."""
    _described[machine] = spec


def attach_devices(spec: MachineSpec, machine: Machine, *, debugcon: Output | None = None,
                   serial: Output | None = None) -> Built:
    """The devices of ``spec`` attached to ``machine``, nothing loaded: :func:`build`'s
    first half, and all a restore needs (the memory and the vCPUs come from the snapshot)."""
    spec.validate()
    if spec.board is None:
        if not spec.consoles.uart:
            return Built(None, None, None)
        from .devices.interrupt import irqfd_line
        from .devices.uart import COM1_IRQ, Uart16550
        from .interface import bind

        intf = bind(machine)
        uart = Uart16550(serial, irq=irqfd_line(intf, COM1_IRQ))
        uart.attach(intf)
        return Built(None, uart.feed, None)
    from .boards import BOARDS
    from .delivery import Delivery

    consoles = spec.consoles
    platform = BOARDS[spec.board](
        machine, debugcon=debugcon, serial=serial, posted_debugcon=consoles.posted_debugcon,
        disks=spec.disks, nets=spec.nets, rng=spec.rng, virtio_console=consoles.virtio_console,
        doorbells=Delivery(spec.doorbells), sercon=consoles.sercon, vhost_user=spec.vhost_user)
    feed = platform.console.feed if platform.console is not None else platform.uart.feed
    return Built(platform, feed, None)


def _load_kernel(machine: Machine, platform: Platform, boot: Boot) -> LoadedKernel:
    """Load the kernel; on a board with PCI, first do what firmware would have done for its
    interrupts (route the PIRQ links, write each function's Interrupt Line) and list them in
    the MP table, since the kernel has no ACPI and no BIOS to ask."""
    from .loader.linux import load_linux

    assert machine.memory is not None and boot.kernel is not None
    pci_interrupts = platform.pci.route_intx() if platform.pci is not None else []
    with open(boot.kernel, "rb") as file:
        kernel = file.read()
    initrd = None
    if boot.initrd is not None:
        with open(boot.initrd, "rb") as file:
            initrd = file.read()
    return load_linux(machine.memory, [loop.vcpu for loop in machine.vcpus], kernel,
                      initrd=initrd, cmdline=boot.cmdline, pci_interrupts=pci_interrupts)
