"""The transport state the legacy block and the modern common configuration share: one
device, one queue selector (a transitional driver may use either interface, §4.1.4.10),
the feature selectors and the ISR status (§4.1.4.5)."""

from __future__ import annotations

import threading
from collections import Counter

from ..device import VirtioDevice
from ..transport import InterruptStatus


class PciState:
    """What both register blocks of a virtio-pci function read and write. ``lock`` orders
    register accesses of either interface."""

    def __init__(self, device: VirtioDevice, isr: InterruptStatus,
                 stats: Counter[str]) -> None:
        self.device = device
        self.isr = isr
        self.stats = stats
        self.lock = threading.RLock()
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0

    def reset(self) -> None:
        """The registers after a device reset: selectors 0, the ISR clear (line down)."""
        self.isr.clear()
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0

    def read_isr(self) -> bytes:
        """§4.1.4.5.1: reading the ISR status clears it and de-asserts the interrupt."""
        return bytes([self.isr.clear() & 0xFF])

    def set_device_status(self, value: int) -> None:
        """The driver wrote device_status (either interface): 0 resets."""
        self.device.set_status(value)
        if value == 0:
            self.reset()
