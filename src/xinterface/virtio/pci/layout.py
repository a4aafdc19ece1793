"""virtio-pci's numbers (virtio 1.2 §4.1): IDs, the vendor capabilities, where each structure
sits in the modern BAR, the legacy register block's offsets, and the register-block shape
both BARs' blocks have."""

from __future__ import annotations

import struct
from typing import Protocol

VIRTIO_PCI_VENDOR = 0x1AF4       # §4.1.2
# §4.1.2.3 Transitional PCI Device IDs, by virtio device type (not a formula).
TRANSITIONAL_DEVICE_IDS = {1: 0x1000, 2: 0x1001, 5: 0x1002, 3: 0x1003, 8: 0x1004, 4: 0x1005,
                           9: 0x1009}
MODERN_DEVICE_BASE = 0x1040
PCI_CAP_VENDOR = 0x09
VIRTIO_MSI_NO_VECTOR = 0xFFFF
# PCI class codes (PCI Code and ID Assignment Specification) per virtio device type.
CLASS_CODES = {1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0x00FF00}

# §4.1.4: cfg_type of struct virtio_pci_cap
CAP_COMMON = 1
CAP_NOTIFY = 2
CAP_ISR = 3
CAP_DEVICE = 4
CAP_PCI_CFG = 5
# struct virtio_pci_cap after cap_vndr and cap_next (which add_capability writes):
# cap_len, cfg_type, bar, id, padding[2], offset, length
_CAP = struct.Struct("<BBBBxxII")
CAP_BAR = 4                      # offsets in the capability of bar, offset, length
CAP_OFFSET = 8
CAP_LENGTH = 12
CAP_PCI_CFG_DATA = 16            # §4.1.4.9: pci_cfg_data, after struct virtio_pci_cap

# The modern BAR's layout: one page per structure.
MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
COMMON_OFFSET, COMMON_SIZE = 0x0000, 0x3C
ISR_OFFSET, ISR_SIZE = 0x1000, 1
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET, NOTIFY_SIZE = 0x3000, 2

# §4.1.4.3 struct virtio_pci_common_cfg
CC_DEVICE_FEATURE_SELECT = 0x00
CC_DEVICE_FEATURE = 0x04
CC_DRIVER_FEATURE_SELECT = 0x08
CC_DRIVER_FEATURE = 0x0C
CC_CONFIG_MSIX_VECTOR = 0x10
CC_NUM_QUEUES = 0x12
CC_DEVICE_STATUS = 0x14
CC_CONFIG_GENERATION = 0x15
CC_QUEUE_SELECT = 0x16
CC_QUEUE_SIZE = 0x18
CC_QUEUE_MSIX_VECTOR = 0x1A
CC_QUEUE_ENABLE = 0x1C
CC_QUEUE_NOTIFY_OFF = 0x1E
CC_QUEUE_DESC = 0x20
CC_QUEUE_DRIVER = 0x28
CC_QUEUE_DEVICE = 0x30
CC_QUEUE_NOTIFY_DATA = 0x38
CC_QUEUE_RESET = 0x3A

# §4.1.4.10 the legacy register block
LEGACY_BAR = 0
LEGACY_BAR_SIZE = 0x100
L_DEVICE_FEATURES = 0x00
L_DRIVER_FEATURES = 0x04
L_QUEUE_ADDRESS = 0x08
L_QUEUE_SIZE = 0x0C
L_QUEUE_SELECT = 0x0E
L_QUEUE_NOTIFY = 0x10
L_DEVICE_STATUS = 0x12
L_ISR = 0x13
L_CONFIG = 0x14
L_CONFIG_VECTOR = 0x14           # with MSI-X enabled: two vector registers, then the config
L_QUEUE_VECTOR = 0x16
L_CONFIG_MSIX = 0x18
LEGACY_PAGE = 4096               # §4.1.4.10: the queue address is a 4096-byte page number
LEGACY_ALIGN = 4096              # §2.7.2 legacy interfaces: the used ring's alignment


def pci_device_id(device_type: int) -> int:
    """The PCI device ID of a virtio device of ``device_type`` (§4.1.2): the transitional
    ID for the types that have one (§4.1.2.3), else the modern one."""
    return TRANSITIONAL_DEVICE_IDS.get(device_type, MODERN_DEVICE_BASE + device_type)


def virtio_cap(cfg_type: int, offset: int, length: int, *, bar: int = MODERN_BAR,
               extra: int = 0) -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next: cap_len counts the whole capability,
    ``extra`` bytes of it after the struct (which the caller appends)."""
    return _CAP.pack(16 + extra, cfg_type, bar, 0, offset, length)


class Registers(Protocol):
    """A BAR's register block as the bus (and the §4.1.4.9 window) reach it."""

    def read(self, offset: int, size: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...
