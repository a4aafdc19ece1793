"""The microvm board: a PC without PCI built from xinterface clients, for unmodified
firmware (SeaBIOS's ``bios-microvm.bin``).

What Debian's ``bios-microvm.bin`` looks for: fw_cfg with DMA (signature, ID, CPU counts, RAM
size, ``etc/e820``, ``etc/boot-fail-wait``), a debug console on 0x402, COM1, the CMOS/RTC, and
the reset ports. Everything else it probes (PCI config space, the PIT's speaker port, ...) is
unclaimed: reads return all-ones and writes are dropped, as on a board without the device.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

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
from ..devices.output import Output
from ..devices.pci import PciHost
from ..devices.reset import ResetControl
from ..devices.uart import Uart16550
from ..machine import Machine
from ..memory import HIGH_RAM_BASE, GuestMemory
from ..xinterface import XInterface, bind

SEABIOS_DEBUG_PORT = 0x402  # SeaBIOS's CONFIG_DEBUG_IO port, as QEMU's isa-debugcon
BOOT_FAIL_WAIT_SECONDS = 0  # no retry delay after "No bootable device": reset at once


@dataclass
class Platform:
    intf: XInterface
    fw_cfg: FwCfg
    debugcon: DebugConsole
    uart: Uart16550
    cmos: Cmos
    reset: ResetControl
    pci: PciHost | None = None
    virtio: list[object] = field(default_factory=list)  # transports, in slot order


def ram_layout(memory: GuestMemory) -> tuple[int, int]:
    """(RAM below 4 GiB, RAM above it) as e820 reports it: firmware ROM left out, the BIOS
    alias below 1 MiB counted as RAM, as QEMU reports it (SeaBIOS reserves it itself)."""
    low = max((r.end for r in memory.regions if not r.readonly and r.end <= 1 << 32),
              default=0)
    high = sum(r.size for r in memory.regions if r.gpa >= HIGH_RAM_BASE)
    return low, high


def attach_microvm(machine: Machine, *, debugcon: Output | None = None,
                   serial: Output | None = None, posted_debugcon: bool = False) -> Platform:
    """Attach the devices to ``machine`` through one xinterface (``Machine.close()`` ends it)."""
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
    intf = bind(machine)
    platform = Platform(intf, fw, DebugConsole(debugcon, port=SEABIOS_DEBUG_PORT,
                                               posted=posted_debugcon),
                        Uart16550(serial), Cmos(memory_registers(low, high)), ResetControl())
    for device in (platform.fw_cfg, platform.debugcon, platform.uart, platform.cmos,
                   platform.reset):
        device.attach(intf)
    return platform
