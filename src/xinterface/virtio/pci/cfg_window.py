"""The PCI function of a virtio-pci transport: its vendor capabilities (virtio 1.2 §4.1.4)
and the PCI configuration access capability (§4.1.4.9), a window through configuration
space onto either BAR's registers for drivers that cannot reach the BAR (firmware before
it maps memory BARs).

The capability area is read-only but for the window's ``bar``, ``offset`` and ``length``
(the driver's) and its ``pci_cfg_data``: an access there goes to the BAR, offset and length
the driver wrote, as the same access through the BAR would.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from ...devices.pci import PciFunction
from .layout import (
    CAP_BAR,
    CAP_COMMON,
    CAP_DEVICE,
    CAP_ISR,
    CAP_LENGTH,
    CAP_NOTIFY,
    CAP_OFFSET,
    CAP_PCI_CFG,
    CAP_PCI_CFG_DATA,
    COMMON_OFFSET,
    COMMON_SIZE,
    DEVICE_OFFSET,
    ISR_OFFSET,
    ISR_SIZE,
    NOTIFY_OFFSET,
    NOTIFY_SIZE,
    PCI_CAP_VENDOR,
    Registers,
    virtio_cap,
)
from .msix import CAP_CONTROL, MSIX_BAR, MSIX_CAP_ID, Msix


class VirtioPciFunction(PciFunction):
    """A PciFunction with the virtio capabilities; ``bars`` maps a BAR index to the
    registers the window reaches through it. :attr:`cfg_cap` is the offset of the
    configuration access capability."""

    def __init__(self, vendor: int, device: int, class_code: int, *,
                 bars: Mapping[int, Registers], config_len: int, **options: Any) -> None:
        super().__init__(vendor, device, class_code, **options)
        self._bars = dict(bars)
        self.msix: Msix | None = None
        for cfg_type, offset, length in ((CAP_COMMON, COMMON_OFFSET, COMMON_SIZE),
                                         (CAP_ISR, ISR_OFFSET, ISR_SIZE),
                                         (CAP_DEVICE, DEVICE_OFFSET, config_len)):
            self.add_capability(PCI_CAP_VENDOR, virtio_cap(cfg_type, offset, length))
        # notify_off_multiplier 0: every queue's doorbell is the same address (§4.1.4.4).
        self.add_capability(PCI_CAP_VENDOR, virtio_cap(CAP_NOTIFY, NOTIFY_OFFSET,
                                                       NOTIFY_SIZE, extra=4) + bytes(4))
        self.cfg_cap = self.add_capability(
            PCI_CAP_VENDOR, virtio_cap(CAP_PCI_CFG, 0, 0, bar=0, extra=4) + bytes(4))

    def add_msix(self, msix: Msix) -> None:
        """The MSI-X capability, its Message Control kept by ``msix``; its BAR reachable
        through the window too."""
        self.msix = msix
        msix.install(self.config, self.add_capability(MSIX_CAP_ID, msix.capability()))
        self._bars[MSIX_BAR] = msix

    def _in_window(self, offset: int) -> bool:
        data = self.cfg_cap + CAP_PCI_CFG_DATA
        return data <= offset < data + 4

    def read(self, offset: int, size: int) -> bytes:
        if self._in_window(offset):
            return self.window_access(None, size)
        return super().read(offset, size)

    def write_capability(self, offset: int, data: bytes) -> None:
        if self._in_window(offset):
            self.window_access(data, len(data))
            return
        if self.msix is not None and self.msix.owns(offset):
            self.msix.config_write(offset, data)
            return
        cap = self.cfg_cap
        for i, byte in enumerate(data):
            at = offset + i
            # bar (cap+4), offset (cap+8..11) and length (cap+12..15) are the driver's.
            if at == cap + CAP_BAR or cap + CAP_OFFSET <= at < cap + CAP_PCI_CFG_DATA:
                self.config[at] = byte

    def writable_capability(self, offset: int) -> bool:
        cap = self.cfg_cap
        if offset == cap + CAP_BAR or cap + CAP_OFFSET <= offset < cap + CAP_PCI_CFG_DATA:
            return True
        # MSI-X Message Control: the driver sets Enable and Function Mask (Msix.load checks
        # the state those bits come back with).
        msix = self.msix
        return msix is not None and 0 <= offset - (msix.cap + CAP_CONTROL) < 2

    def window_access(self, data: bytes | None, size: int) -> bytes:
        """A read (``data`` None) or write of ``pci_cfg_data``: the access goes to the BAR,
        offset and length the driver wrote into the capability; a BAR without registers or
        a length other than 1, 2 or 4 reads 0 and drops writes."""
        cap = self.cfg_cap
        config = self.config
        regs = self._bars.get(config[cap + CAP_BAR])
        (at,) = struct.unpack_from("<I", config, cap + CAP_OFFSET)
        (length,) = struct.unpack_from("<I", config, cap + CAP_LENGTH)
        if length not in (1, 2, 4) or regs is None:
            return bytes(size)
        if data is None:
            return regs.read(at, length).ljust(size, b"\0")[:size]
        regs.write(at, data[:length])  # a doorbell this way is served by the register write
        return b""
