"""The ACPI tables a PC guest needs: RSDP, XSDT, RSDT, FADT, MADT and DSDT (ACPI 6.5, chapter 5).

Each builder takes the addresses it points at as plain integers and returns the table with a
correct checksum for those values. The table-loader (``loader.py``) passes offsets into its blob
instead, and has the firmware add the blob's address and redo the checksums; the ``*_OFFSET``
constants name the pointer fields it patches.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ...errors import XInterfaceError

OEM_ID = b"XINTF "          # 6 bytes
OEM_TABLE_ID = b"XINTERFC"  # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"XINT"
CREATOR_REVISION = 1

# System Description Table Header (5.2.6): signature, length, revision, checksum, OEM ID,
# OEM table ID, OEM revision, creator ID, creator revision.
_HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = _HEADER.size   # 36
CHECKSUM_OFFSET = 9

# RSDP (5.2.5.3): the ACPI 1.0 checksum covers its first 20 bytes, the extended one all 36.
RSDP_SIGNATURE = b"RSD PTR "
_RSDP = struct.Struct("<8sB6sBIIQB3x")
RSDP_SIZE = _RSDP.size            # 36
RSDP_V1_SIZE = 20
RSDP_REVISION = 2                 # ACPI 2.0 and later: XSDT, length, extended checksum
RSDP_CHECKSUM_OFFSET = 8
RSDP_RSDT_OFFSET = 16
RSDP_XSDT_OFFSET = 24
RSDP_EXT_CHECKSUM_OFFSET = 32

XSDT_REVISION = 1                 # 5.2.8
RSDT_REVISION = 1                 # 5.2.7
DSDT_REVISION = 2                 # 5.2.11.1: 2 and above: 64-bit AML integers
MADT_REVISION = 1                 # what QEMU writes; no field we use is newer

# FADT (5.2.9, Table 5.9): byte offsets of the fields we set.
FADT_DSDT_OFFSET = 40
FADT_PM_PROFILE_OFFSET = 45
FADT_IAPC_BOOT_ARCH_OFFSET = 109
FADT_FLAGS_OFFSET = 112
FADT_RESET_REG_OFFSET = 116
FADT_RESET_VALUE_OFFSET = 128
FADT_MINOR_VERSION_OFFSET = 131
FADT_X_DSDT_OFFSET = 140
FADT_SLEEP_CONTROL_OFFSET = 244
FADT_SLEEP_STATUS_OFFSET = 256
FADT_HYPERVISOR_ID_OFFSET = 268
FADT_SIZES = {5: 268, 6: 276}     # revision -> length (ACPI 5.x adds sleep registers, 6.x the
FADT_MINOR = {5: 1, 6: 5}         # hypervisor ID); minor: ACPI 5.1, ACPI 6.5

# FADT Flags (Table 5.10).
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
# IA-PC Boot Architecture Flags (Table 5.11).
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1
IAPC_VGA_NOT_PRESENT = 1 << 2

# Generic Address Structure (5.2.3.2): space, bit width, bit offset, access size, address.
_GAS = struct.Struct("<BBBBQ")
GAS_SYSTEM_MEMORY = 0
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1

# MADT (5.2.12): local APIC address, flags, then interrupt controller structures.
LOCAL_APIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS = 0xFEC00000
MADT_PCAT_COMPAT = 1 << 0       # dual 8259s are present (KVM's in-kernel irqchip has them)
MADT_LOCAL_APIC = 0             # 5.2.12.2
MADT_IO_APIC = 1                # 5.2.12.3
MADT_INTERRUPT_OVERRIDE = 2     # 5.2.12.5
MADT_LOCAL_APIC_NMI = 4         # 5.2.12.7
LOCAL_APIC_ENABLED = 1 << 0
MPS_INTI_CONFORMS = 0x0000      # polarity and trigger as the bus (ISA: edge, active high)
MPS_INTI_LEVEL_HIGH = 0x000D    # polarity 01 active high, trigger 11 level (Table 5.26)
ALL_PROCESSORS = 0xFF
ISA_BUS = 0


@dataclass(frozen=True)
class Override:
    """An Interrupt Source Override: ISA IRQ ``source`` is GSI ``gsi`` with MPS INTI ``flags``."""

    source: int
    gsi: int
    flags: int = MPS_INTI_CONFORMS


# What QEMU's pc and microvm boards declare: the PIT's IRQ 0 is wired to GSI 2 of the IOAPIC.
IRQ0_OVERRIDE = Override(0, 2)


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with that byte zero) sum to 0 mod 256 (5.2.6)."""
    return -sum(data) & 0xFF


def _set_checksum(table: bytearray, offset: int, start: int = 0, end: int | None = None) -> None:
    table[offset] = 0
    table[offset] = checksum(bytes(table[start:end]))


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: the 36-byte header, then ``body``; checksum set."""
    if len(signature) != 4:
        raise XInterfaceError(errno.EINVAL, f"ACPI signature {signature!r} is not 4 bytes",
                              argument="signature", value=signature)
    table = bytearray(_HEADER.pack(signature, HEADER_SIZE + len(body), revision, 0, OEM_ID,
                                   OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION))
    table += body
    _set_checksum(table, CHECKSUM_OFFSET)
    return bytes(table)


def rsdp(xsdt_address: int, rsdt_address: int = 0) -> bytes:
    """The Root System Description Pointer, revision 2, both checksums set."""
    table = bytearray(_RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, rsdt_address,
                                 RSDP_SIZE, xsdt_address, 0))
    _set_checksum(table, RSDP_CHECKSUM_OFFSET, 0, RSDP_V1_SIZE)
    _set_checksum(table, RSDP_EXT_CHECKSUM_OFFSET)
    return bytes(table)


def xsdt(addresses: Iterable[int]) -> bytes:
    """Extended System Description Table: 64-bit table addresses (5.2.8)."""
    return sdt(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in addresses))


def rsdt(addresses: Iterable[int]) -> bytes:
    """Root System Description Table: 32-bit table addresses, for ACPI 1.0 readers (5.2.7)."""
    return sdt(b"RSDT", RSDT_REVISION, b"".join(struct.pack("<I", a) for a in addresses))


def gas(space: int, address: int, bit_width: int = 8, access: int = GAS_ACCESS_BYTE) -> bytes:
    """A Generic Address Structure (5.2.3.2)."""
    return _GAS.pack(space, bit_width, 0, access, address)


def fadt(dsdt_address: int, *, revision: int = 5, reset: tuple[int, int] | None = None,
         iapc_boot_arch: int = IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT) -> bytes:
    """A hardware-reduced Fixed ACPI Description Table (4.1, 5.2.9), as QEMU's microvm has.

    No PM1/GPE blocks, no SCI, no FACS (allowed when HW_REDUCED_ACPI is set). The DSDT is named
    by both the 32-bit DSDT field (SeaBIOS reads that one) and X_DSDT. ``reset`` is the
    (I/O port, value) of the reset register, e.g. ``(0xCF9, 0x06)``.
    """
    if revision not in FADT_SIZES:
        raise XInterfaceError(errno.EINVAL, f"FADT revision {revision} is not one of 5, 6",
                              argument="revision", value=revision)
    if not 0 <= dsdt_address < 1 << 32:
        raise XInterfaceError(errno.EINVAL, f"DSDT address {dsdt_address:#x} is above 4 GiB",
                              argument="dsdt_address", value=dsdt_address)
    body = bytearray(FADT_SIZES[revision] - HEADER_SIZE)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, *values)

    flags = FADT_F_HW_REDUCED_ACPI
    put(FADT_DSDT_OFFSET, "<I", dsdt_address)
    put(FADT_IAPC_BOOT_ARCH_OFFSET, "<H", iapc_boot_arch)
    if reset is not None:
        port, value = reset
        flags |= FADT_F_RESET_REG_SUP
        put(FADT_RESET_REG_OFFSET, "12s", gas(GAS_SYSTEM_IO, port))
        put(FADT_RESET_VALUE_OFFSET, "<B", value)
    put(FADT_FLAGS_OFFSET, "<I", flags)
    put(FADT_MINOR_VERSION_OFFSET, "<B", FADT_MINOR[revision])
    put(FADT_X_DSDT_OFFSET, "<Q", dsdt_address)
    return sdt(b"FACP", revision, bytes(body))


def madt(cpus: int, *, overrides: Sequence[Override] = (IRQ0_OVERRIDE,),
         ioapic_id: int = 0, ioapic_address: int = IOAPIC_ADDRESS, gsi_base: int = 0) -> bytes:
    """Multiple APIC Description Table (5.2.12): one enabled local APIC per vCPU (APIC ID =
    vCPU index, as KVM assigns them), one IOAPIC, the ISA overrides, LINT1 as NMI."""
    if not 1 <= cpus <= 0xFF:
        raise XInterfaceError(errno.EINVAL, f"{cpus} vCPUs: xAPIC MADT entries hold 1-255",
                              argument="cpus", value=cpus)
    parts = [struct.pack("<II", LOCAL_APIC_ADDRESS, MADT_PCAT_COMPAT)]
    for i in range(cpus):
        parts.append(struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, LOCAL_APIC_ENABLED))
    parts.append(struct.pack("<BBBBII", MADT_IO_APIC, 12, ioapic_id, 0, ioapic_address,
                             gsi_base))
    for o in overrides:
        parts.append(struct.pack("<BBBBIH", MADT_INTERRUPT_OVERRIDE, 10, ISA_BUS, o.source,
                                 o.gsi, o.flags))
    parts.append(struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 1))
    return sdt(b"APIC", MADT_REVISION, b"".join(parts))


def dsdt(aml: Iterable[bytes]) -> bytes:
    """Differentiated System Description Table: the header, then AML terms (5.2.11.1)."""
    return sdt(b"DSDT", DSDT_REVISION, b"".join(aml))
