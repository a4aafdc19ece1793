"""PCI configuration space: the type 0 header every function starts with.

Register offsets: PCI Local Bus Specification 3.0, 6.1 (configuration space header).
"""

from __future__ import annotations

import struct

VENDOR_INTEL = 0x8086
DEVICE_I440FX = 0x1237
DEVICE_PIIX3_ISA = 0x7000
CLASS_HOST_BRIDGE = 0x060000
CLASS_ISA_BRIDGE = 0x060100
HEADER_MULTIFUNCTION = 0x80
I440FX_PAM0 = 0x59       # PAM0-PAM6: attributes of the BIOS and option ROM areas
PIIX3_PIRQ_ROUTE = 0x60  # PIRQA-D routing; 0x80: disabled
WRITABLE_FROM = 0x40    # the standard header is read-only here; device registers follow


def config_header(vendor: int, device: int, class_code: int, header_type: int = 0) -> bytearray:
    space = bytearray(256)
    struct.pack_into("<HH", space, 0x00, vendor, device)
    struct.pack_into("<I", space, 0x08, class_code << 8)  # revision 0
    space[0x0E] = header_type
    return space
