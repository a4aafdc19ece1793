"""The transport state the legacy block and the modern common configuration share: one
device, one queue selector (a transitional driver may use either interface, §4.1.4.10),
the feature selectors, the ISR status (§4.1.4.5) and the MSI-X state, if the function has
MSI-X (:mod:`.msix`)."""

from __future__ import annotations

import threading
from collections import Counter

from ..device import VirtioDevice
from ..transport import InterruptStatus
from .layout import VIRTIO_MSI_NO_VECTOR
from .msix import Msix


class PciState:
    """What both register blocks of a virtio-pci function read and write. ``lock`` orders
    register accesses of either interface."""

    def __init__(self, device: VirtioDevice, isr: InterruptStatus,
                 stats: Counter[str], msix: Msix | None = None) -> None:
        self.device = device
        self.msix = msix
        self.isr = isr
        self.stats = stats
        self.lock = threading.RLock()
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0

    def reset(self) -> None:
        """The registers after a device reset: selectors 0, the ISR clear (line down), no
        MSI-X vector assigned."""
        self.isr.clear()
        if self.msix is not None:
            self.msix.reset_vectors()
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

    @property
    def msix_enabled(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def config_vector(self) -> int:
        return self.msix.config_vector if self.msix is not None else VIRTIO_MSI_NO_VECTOR

    def set_config_vector(self, vector: int) -> None:
        """A vector the function cannot map (or any, without MSI-X) reads back
        VIRTIO_MSI_NO_VECTOR (§4.1.5.1.2)."""
        if self.msix is not None:
            self.msix.set_config_vector(vector)

    def queue_vector(self) -> int:
        """The selected queue's vector."""
        msix = self.msix
        return msix.queue_vector(self.queue_select) if msix is not None else VIRTIO_MSI_NO_VECTOR

    def set_queue_vector(self, vector: int) -> None:
        if self.msix is not None:
            self.msix.set_queue_vector(self.queue_select, vector)
        else:
            self.stats["msix_vector_dropped"] += 1
