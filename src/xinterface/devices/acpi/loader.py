"""QEMU's ACPI table-loader: tables handed to the firmware through fw_cfg, linked by it.

The firmware (SeaBIOS's ``romfile_loader_execute``, OVMF's ``QemuFwCfgAcpi``) reads the fw_cfg
file ``etc/table-loader``: 128-byte little-endian commands it runs in order.

- ALLOCATE (1): file name[56], alignment u32, zone u8. Copy the named fw_cfg file into memory
  of that zone (HIGH: anywhere below 4 GiB; FSEG: 0xE0000-0xFFFFF, where the OS scans for
  the RSDP).
- ADD_POINTER (2): destination file[56], source file[56], offset u32, size u8. Add the address
  the source file was loaded at to the ``size``-byte integer at ``offset`` in the destination.
- ADD_CHECKSUM (3): file[56], result offset u32, start u32, length u32. Subtract the byte sum
  of ``[start, start+length)`` from the byte at the result offset; that range includes the
  byte, so it then sums to zero whatever the byte held before.

So the tables blob holds offsets relative to its own start where addresses belong; the firmware
makes them absolute and then fixes the checksums. This module writes those commands and the
three files QEMU's microvm offers: ``etc/acpi/rsdp``, ``etc/acpi/tables``, ``etc/table-loader``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Sequence

from ...errors import XInterfaceError
from . import dsdt as dsdt_aml
from . import tables
from .dsdt import MmioDevice

COMMAND_SIZE = 128
FILE_NAME_SIZE = 56          # fw_cfg's file name field, NUL included
COMMAND_ALLOCATE = 1
COMMAND_ADD_POINTER = 2
COMMAND_ADD_CHECKSUM = 3
ZONE_HIGH = 1
ZONE_FSEG = 2

RSDP_FILE = "etc/acpi/rsdp"
TABLES_FILE = "etc/acpi/tables"
LOADER_FILE = "etc/table-loader"
TABLES_ALIGN = 64            # QEMU's; a FACS (none here) must be 64-byte aligned
RSDP_ALIGN = 16              # 5.2.5.1: the OS scans for the RSDP on 16-byte boundaries

RESET_PORT, RESET_VALUE = 0xCF9, 0x06   # PIIX reset control: full reset (devices/reset.py)


def _file_name(name: str, argument: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= FILE_NAME_SIZE or b"\0" in raw:
        raise XInterfaceError(errno.EINVAL, f"table-loader file name {name!r} must be 1-"
                              f"{FILE_NAME_SIZE - 1} bytes", argument=argument, value=name)
    return raw


class TableLoader:
    """The command list of ``etc/table-loader``, in the order the firmware must run it."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self._sizes: dict[str, int] = {}

    def allocate(self, file: str, size: int, *, align: int, zone: int) -> None:
        """Have the firmware load ``file`` (``size`` bytes, for later range checks)."""
        if align <= 0 or align & (align - 1):
            raise XInterfaceError(errno.EINVAL, f"alignment {align} is not a power of two",
                                  argument="align", value=align)
        if zone not in (ZONE_HIGH, ZONE_FSEG):
            raise XInterfaceError(errno.EINVAL, f"zone {zone} is not HIGH (1) or FSEG (2)",
                                  argument="zone", value=zone)
        raw = _file_name(file, "file")
        self._sizes[file] = size
        self._emit(struct.pack("<I56sIB", COMMAND_ALLOCATE, raw, align, zone))

    def add_pointer(self, dest: str, offset: int, size: int, src: str) -> None:
        """Add ``src``'s load address to the ``size``-byte integer at ``dest[offset]``."""
        self._check_range(dest, offset, size, "offset")
        self._check_range(src, 0, 0, "src")
        if size not in (1, 2, 4, 8):
            raise XInterfaceError(errno.EINVAL, f"pointer size {size} is not 1, 2, 4 or 8",
                                  argument="size", value=size)
        self._emit(struct.pack("<I56s56sIB", COMMAND_ADD_POINTER, _file_name(dest, "dest"),
                               _file_name(src, "src"), offset, size))

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        """Make ``file[start:start+length]`` sum to zero by adjusting the byte at ``offset``."""
        self._check_range(file, offset, 1, "offset")
        self._check_range(file, start, length, "start")
        self._emit(struct.pack("<I56sIII", COMMAND_ADD_CHECKSUM, _file_name(file, "file"),
                               offset, start, length))

    def _check_range(self, file: str, offset: int, length: int, argument: str) -> None:
        size = self._sizes.get(file)
        if size is None:
            raise XInterfaceError(errno.ENOENT, f"{file!r} is not allocated before its use",
                                  argument=argument, value=file)
        if offset < 0 or length < 0 or offset + length > size:
            raise XInterfaceError(errno.EINVAL, f"[{offset}, {offset + length}) is outside "
                                  f"{file!r} ({size} bytes)", argument=argument, value=offset)

    def _emit(self, command: bytes) -> None:
        self.commands.append(command.ljust(COMMAND_SIZE, b"\0"))

    def encode(self) -> bytes:
        return b"".join(self.commands)


class _Blob:
    """The ``etc/acpi/tables`` file being laid out: tables appended, checksums left to the
    firmware (zeroed here, as QEMU leaves them, so a loader that sets rather than adjusts the
    byte gets the same answer)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pointers: list[tuple[int, int]] = []   # (offset in blob, size)
        self.checksums: list[tuple[int, int, int]] = []  # (result offset, start, length)

    def add(self, table: bytes, pointer_fields: Iterable[tuple[int, int]] = ()) -> int:
        start = len(self.data)
        self.data += table
        self.data[start + tables.CHECKSUM_OFFSET] = 0
        self.pointers += [(start + offset, size) for offset, size in pointer_fields]
        self.checksums.append((start + tables.CHECKSUM_OFFSET, start, len(table)))
        return start


def acpi_files(cpus: int, mmio_devices: Sequence[MmioDevice] = (), *,
               overrides: Sequence[tables.Override] = (tables.IRQ0_OVERRIDE,),
               com1: bool = True, rtc: bool = True, fw_cfg: bool = True,
               reset: tuple[int, int] | None = (RESET_PORT, RESET_VALUE),
               rsdt: bool = True, fadt_revision: int = 6) -> dict[str, bytes]:
    """The three fw_cfg files of a microvm's ACPI tables, by name.

    ``mmio_devices`` are virtio-mmio transports as ``(base, size, gsi)``. ``overrides`` are
    the MADT's ISA interrupt source overrides (QEMU's pc adds IRQs 5, 9, 10, 11 as
    ``Override(n, n, MPS_INTI_LEVEL_HIGH)`` for its PCI links). The blob holds DSDT, FADT,
    MADT, XSDT and (``rsdt``) an RSDT, in that order, as QEMU lays its microvm tables out.
    """
    loader = TableLoader()
    blob = _Blob()
    dsdt = blob.add(tables.dsdt(dsdt_aml.microvm(mmio_devices, com1=com1, rtc_device=rtc,
                                                 fw_cfg_device=fw_cfg)))
    fadt = blob.add(tables.fadt(dsdt, revision=fadt_revision, reset=reset),
                    [(tables.FADT_DSDT_OFFSET, 4), (tables.FADT_X_DSDT_OFFSET, 8)])
    madt = blob.add(tables.madt(cpus, overrides=overrides))
    entries = [fadt, madt]
    xsdt = blob.add(tables.xsdt(entries), [(tables.HEADER_SIZE + 8 * i, 8)
                                           for i in range(len(entries))])
    rsdt_offset = 0
    if rsdt:
        rsdt_offset = blob.add(tables.rsdt(entries), [(tables.HEADER_SIZE + 4 * i, 4)
                                                      for i in range(len(entries))])
    rsdp = bytearray(tables.rsdp(xsdt, rsdt_offset))
    rsdp[tables.RSDP_CHECKSUM_OFFSET] = rsdp[tables.RSDP_EXT_CHECKSUM_OFFSET] = 0

    loader.allocate(TABLES_FILE, len(blob.data), align=TABLES_ALIGN, zone=ZONE_HIGH)
    for offset, size in blob.pointers:
        loader.add_pointer(TABLES_FILE, offset, size, TABLES_FILE)
    for result, start, length in blob.checksums:
        loader.add_checksum(TABLES_FILE, result, start, length)
    loader.allocate(RSDP_FILE, len(rsdp), align=RSDP_ALIGN, zone=ZONE_FSEG)
    loader.add_pointer(RSDP_FILE, tables.RSDP_XSDT_OFFSET, 8, TABLES_FILE)
    if rsdt:
        loader.add_pointer(RSDP_FILE, tables.RSDP_RSDT_OFFSET, 4, TABLES_FILE)
    # The 1.0 checksum first: the extended one covers its byte.
    loader.add_checksum(RSDP_FILE, tables.RSDP_CHECKSUM_OFFSET, 0, tables.RSDP_V1_SIZE)
    loader.add_checksum(RSDP_FILE, tables.RSDP_EXT_CHECKSUM_OFFSET, 0, tables.RSDP_SIZE)
    return {RSDP_FILE: bytes(rsdp), TABLES_FILE: bytes(blob.data), LOADER_FILE: loader.encode()}
