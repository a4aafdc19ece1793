"""ACPI tables for our boards, built in Python and served through QEMU's table-loader.

- :mod:`.aml`: an encoder for the AML terms and resource descriptors a DSDT needs.
- :mod:`.dsdt`: device objects (virtio-mmio, COM1, RTC, fw_cfg) and a microvm DSDT.
- :mod:`.tables`: RSDP, XSDT, RSDT, FADT (hardware-reduced), MADT, DSDT with checksums.
- :mod:`.loader`: the ``etc/table-loader`` commands and :func:`acpi_files`, the three fw_cfg
  files a board adds.
"""

from __future__ import annotations

from .loader import LOADER_FILE, RSDP_FILE, TABLES_FILE, TableLoader, acpi_files
from .tables import IRQ0_OVERRIDE, MPS_INTI_LEVEL_HIGH, Override

__all__ = ["IRQ0_OVERRIDE", "LOADER_FILE", "MPS_INTI_LEVEL_HIGH", "RSDP_FILE", "TABLES_FILE",
           "Override", "TableLoader", "acpi_files"]
