"""DSDT device objects for the devices our boards have, and a microvm DSDT made of them.

What a device object holds follows the ACPI 6.5 device configuration objects (6.1 _HID, _UID,
6.2.11 _CCA, 6.2.2 _CRS, 6.3.7 _STA) and the IDs the guests' drivers match: Linux's
``virtio_mmio`` driver and SeaBIOS's ``virtio_mmio_setup_acpi`` look for ``LNRO0005``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence

from ...errors import XInterfaceError
from . import aml

VIRTIO_MMIO_HID = "LNRO0005"   # Linaro's ID for a virtio-mmio transport
SERIAL_EISAID = "PNP0501"      # 16550A-compatible COM port
RTC_EISAID = "PNP0B00"         # AT real-time clock
FW_CFG_HID = "QEMU0002"        # QEMU's fw_cfg, as Linux's qemu_fw_cfg driver matches it

COM1_PORT, COM1_IRQ = 0x3F8, 4
RTC_PORT, RTC_PORTS, RTC_IRQ = 0x70, 2, 8
FW_CFG_PORT, FW_CFG_PORTS = 0x510, 0x0C   # selector, data, DMA address (two 32-bit halves)
STA_PRESENT_ENABLED_HIDDEN = 0x0B         # present, enabled, functioning; not shown in UI

MmioDevice = tuple[int, int, int]   # (base, size, gsi)


def virtio_mmio(index: int, base: int, size: int, gsi: int) -> bytes:
    """``Device (VRnn)``: one virtio-mmio transport, cache-coherent DMA (_CCA), its register
    window and its level-triggered, active-high interrupt, as QEMU's microvm declares them."""
    if not 0 <= index <= 0xFF:
        raise XInterfaceError(errno.EINVAL, f"virtio-mmio index {index} is not 0-255",
                              argument="index", value=index)
    return aml.device(f"VR{index:02X}", [
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(index)),
        aml.name("_CCA", aml.integer(1)),
        aml.name("_CRS", aml.resource_template([
            aml.memory32_fixed(base, size),
            aml.interrupt([gsi]),
        ])),
    ])


def serial(index: int = 0, port: int = COM1_PORT, irq: int = COM1_IRQ) -> bytes:
    """``Device (COMn)``: a 16550A at ``port`` (8 registers) on ISA ``irq``."""
    return aml.device(f"COM{index + 1}", [
        aml.name("_HID", aml.eisaid_term(SERIAL_EISAID)),
        aml.name("_UID", aml.integer(index + 1)),
        aml.name("_CRS", aml.resource_template([
            aml.io(port, port, 0, 8),
            aml.irq_no_flags([irq]),
        ])),
    ])


def rtc() -> bytes:
    """``Device (RTC)``: the MC146818 at 0x70-0x71 on ISA IRQ 8."""
    return aml.device("RTC", [
        aml.name("_HID", aml.eisaid_term(RTC_EISAID)),
        aml.name("_CRS", aml.resource_template([
            aml.io(RTC_PORT, RTC_PORT, 1, RTC_PORTS),
            aml.irq_no_flags([RTC_IRQ]),
        ])),
    ])


def fw_cfg() -> bytes:
    """``Device (FWCF)``: QEMU's fw_cfg I/O ports, hidden from the UI as QEMU declares it."""
    return aml.device("FWCF", [
        aml.name("_HID", aml.string(FW_CFG_HID)),
        aml.name("_STA", aml.integer(STA_PRESENT_ENABLED_HIDDEN)),
        aml.name("_CRS", aml.resource_template([
            aml.io(FW_CFG_PORT, FW_CFG_PORT, 1, FW_CFG_PORTS),
        ])),
    ])


def microvm(mmio_devices: Sequence[MmioDevice] = (), *, com1: bool = True,
            rtc_device: bool = True, fw_cfg_device: bool = True,
            extra: Iterable[bytes] = ()) -> list[bytes]:
    """The AML of a microvm DSDT: ``Scope (\\_SB)`` with COM1, the RTC, fw_cfg and one
    virtio-mmio device per ``(base, size, gsi)``, named VR00, VR01, ... in that order."""
    devices = [serial()] if com1 else []
    if rtc_device:
        devices.append(rtc())
    if fw_cfg_device:
        devices.append(fw_cfg())
    devices += [virtio_mmio(i, base, size, gsi)
                for i, (base, size, gsi) in enumerate(mmio_devices)]
    devices += list(extra)
    return [aml.scope("\\_SB", devices)]
