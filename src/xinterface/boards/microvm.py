"""The microvm board: a PC without PCI built from xinterface clients, for unmodified
firmware (SeaBIOS's ``bios-microvm.bin``).

What Debian's ``bios-microvm.bin`` looks for: fw_cfg with DMA (signature, ID, CPU counts, RAM
size, ``etc/e820``, ``etc/boot-fail-wait``), a debug console on 0x402, COM1, the CMOS/RTC, and
the reset ports. Everything else it probes (PCI config space, the PIT's speaker port, ...) is
unclaimed: reads return all-ones and writes are dropped, as on a board without the device.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

from ..delivery import Delivery
from ..devices.acpi import Override, acpi_files
from ..devices.acpi.dsdt import MmioDevice
from ..devices.cmos import Cmos, memory_registers
from ..devices.debug import DebugConsole
from ..devices.fw_cfg import (
    E820_RAM,
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_RAM_SIZE,
    FwCfg,
    e820_table,
)
from ..devices.interrupt import irqfd_line
from ..devices.level_irq import LevelIrqfds
from ..devices.output import Output
from ..devices.reset import ResetControl
from ..devices.uart import COM1_BASE, COM1_IRQ, Uart16550
from ..errors import XInterfaceError
from ..interface import XInterface, bind
from ..memory import HIGH_RAM_BASE, GuestMemory
from ..runner.machine import Machine
from ..spec import Disk, Net, VhostUser
from ..virtio.device import VirtioDevice
from ..virtio.mmio import MMIO_WINDOW, VirtioMmio
from .platform import Platform
from .virtio import make_devices

VIRTIO_MMIO_BASE = 0xFEB00000  # QEMU's microvm (hw/i386/microvm.c): transports from here,
VIRTIO_MMIO_GSI = 16           # 512 bytes apart, on IOAPIC pins 16 and up
VIRTIO_MMIO_SLOTS = 8          # pins 16-23: KVM's in-kernel IOAPIC has 24 (KVM_IOAPIC_NUM_PINS)
SEABIOS_DEBUG_PORT = 0x402  # SeaBIOS's CONFIG_DEBUG_IO port, as QEMU's isa-debugcon
BOOT_FAIL_WAIT_SECONDS = 0  # no retry delay after "No bootable device": reset at once


def ram_layout(memory: GuestMemory) -> tuple[int, int]:
    """(RAM below 4 GiB, RAM above it) as e820 reports it: firmware ROM left out, the BIOS
    alias below 1 MiB counted as RAM, as QEMU reports it (SeaBIOS reserves it itself)."""
    low = max((r.end for r in memory.regions if not r.readonly and r.end <= 1 << 32),
              default=0)
    high = sum(r.size for r in memory.regions if r.gpa >= HIGH_RAM_BASE)
    return low, high


def acpi_fw_cfg_files(fw: FwCfg, cpus: int, mmio_devices: Sequence[MmioDevice] = (), *,
                      overrides: Sequence[Override] = ()) -> None:
    """Offer the microvm's ACPI tables through fw_cfg the way QEMU does (``etc/acpi/rsdp``,
    ``etc/acpi/tables``, ``etc/table-loader``): SeaBIOS runs the loader, and finds virtio-mmio
    transports (``(base, size, gsi)``) only through the DSDT it links.

    No interrupt source override by default: KVM's default GSI routing (arch/x86/kvm,
    ``default_routing``) wires GSI 0, where the in-kernel PIT raises its interrupt, to IOAPIC
    pin 0, and SeaBIOS's MP table says the same without ``etc/irq0-override``. QEMU declares
    ISA IRQ 0 -> GSI 2 (``IRQ0_OVERRIDE``) because it re-routes GSI 0 to pin 2
    (KVM_SET_GSI_ROUTING); a board that does so passes it here.
    """
    for name, data in acpi_files(cpus, mmio_devices, overrides=overrides).items():
        fw.add_file(name, data)


def attach_microvm(machine: Machine, *, debugcon: Output | None = None,
                   serial: Output | None = None, posted_debugcon: bool = False,
                   acpi: bool = True, mmio_devices: Sequence[MmioDevice] = (),
                   disks: Sequence[Disk] = (), nets: Sequence[Net] = (), rng: bool = False,
                   virtio_console: bool = False, doorbells: Delivery = Delivery.SYNC,
                   sercon: bool = False, vhost_user: Sequence[VhostUser] = ()) -> Platform:
    """Attach the devices to ``machine`` through one xinterface (``Machine.close()`` ends it).

    ``acpi`` adds the hardware-reduced ACPI tables (:func:`acpi_fw_cfg_files`) describing
    COM1, the RTC, fw_cfg, the virtio-mmio transports of the virtio devices, and
    ``mmio_devices`` (more transports to describe, ``(base, size, gsi)``).

    The virtio devices (``disks``, ``nets``, ``rng``, and a console writing to ``serial``
    with ``virtio_console``, and the ``vhost_user`` devices served by backend processes)
    sit behind virtio-mmio transports at QEMU's microvm layout
    (:func:`virtio_mmio_slot`), in that order; ``doorbells`` picks their doorbell delivery.

    ``sercon``: COM1 is the firmware's screen (SeaBIOS's ``etc/sercon-port``: INT 10h text
    output goes to the serial port), as QEMU sets it with ``-nographic``; what an option ROM
    such as iPXE prints then reaches ``serial``.
    """
    made = make_devices(disks=disks, nets=nets, rng=rng, console=serial,
                        virtio_console=virtio_console, vhost_user=vhost_user)
    if len(made.devices) > VIRTIO_MMIO_SLOTS:
        made.close()
        raise XInterfaceError(errno.ENOSPC, f"{len(made.devices)} virtio devices: the microvm "
                              f"board has {VIRTIO_MMIO_SLOTS} virtio-mmio slots",
                              argument="disks", value=len(made.devices))
    transports = [(made.devices[i], *virtio_mmio_slot(i)) for i in range(len(made.devices))]
    mmio_devices = [(base, MMIO_WINDOW, gsi) for _, base, gsi in transports] + list(mmio_devices)
    assert machine.memory is not None
    low, high = ram_layout(machine.memory)
    fw = FwCfg()
    cpus = len(machine.vcpus)
    fw.items[FW_CFG_NB_CPUS] = struct.pack("<H", cpus)
    fw.items[FW_CFG_MAX_CPUS] = struct.pack("<H", cpus)
    fw.items[FW_CFG_RAM_SIZE] = struct.pack("<Q", low + high)
    e820 = [(0, low, E820_RAM)] + ([(HIGH_RAM_BASE, high, E820_RAM)] if high else [])
    fw.add_file("etc/e820", e820_table(e820))
    fw.add_file("etc/boot-fail-wait", struct.pack("<I", BOOT_FAIL_WAIT_SECONDS))
    # No "Press ESC for boot menu" pause (2.5 s by default in SeaBIOS's src/boot.c).
    fw.add_file("etc/show-boot-menu", struct.pack("<H", 0))
    if sercon:
        fw.add_file("etc/sercon-port", struct.pack("<H", COM1_BASE))
    if acpi:
        acpi_fw_cfg_files(fw, cpus, mmio_devices)
    try:
        intf = bind(machine)
    except BaseException:
        made.close()
        raise
    platform = Platform(intf, fw, DebugConsole(debugcon, port=SEABIOS_DEBUG_PORT,
                                               posted=posted_debugcon),
                        Uart16550(serial, irq=irqfd_line(intf, COM1_IRQ)),
                        Cmos(memory_registers(low, high)), ResetControl())
    for device in (platform.fw_cfg, platform.debugcon, platform.uart, platform.cmos,
                   platform.reset):
        device.attach(intf)
    if transports:
        try:
            _attach_mmio(intf, platform, transports, doorbells)
        except BaseException:
            made.close()
            raise
    # Registered after the interrupt lines' hook, so it runs before it (hooks run newest
    # first): the devices stop while the lines they raise are still bound.
    intf.on_release(made.close)
    platform.console = made.console
    return platform


def virtio_mmio_slot(index: int) -> tuple[int, int]:
    """(base, GSI) of virtio-mmio transport ``index``: QEMU's microvm puts them 512 bytes
    apart from 0xFEB00000 on the IOAPIC pins from 16 up (``hw/i386/microvm.c``)."""
    return VIRTIO_MMIO_BASE + MMIO_WINDOW * index, VIRTIO_MMIO_GSI + index


def _attach_mmio(intf: XInterface, platform: Platform,
                 transports: Sequence[tuple[VirtioDevice, int, int]], doorbells: Delivery) -> None:
    """One virtio-mmio transport per device, each interrupting through a level-triggered
    resampling irqfd (the DSDT declares the lines level, active high), or polled by a
    guest when the machine has no in-kernel irqchip."""
    lines = LevelIrqfds(intf) if intf.vm.irqchip else None
    if lines is not None:
        intf.on_release(lines.close)
    for device, base, gsi in transports:
        mmio = VirtioMmio(device, base, irq=lines.line(gsi) if lines is not None else None,
                          doorbells=doorbells)
        mmio.attach(intf)
        platform.virtio.append(mmio)
