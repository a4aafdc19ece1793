"""virtio-pci (virtio 1.2 §4.1): a virtio device as a transitional PCI function.

One function serves both interfaces, as QEMU's default transitional devices do:
- **legacy** (§4.1.4.10, :mod:`.legacy`), I/O BAR0: the 0.9.5 register block. Its doorbell
  is a 2-byte ``outw`` of the queue index to BAR0+16: the seed's PIO xioevent with its
  payload.
- **modern** (§4.1.4, :mod:`.modern`), 64-bit memory BAR4, found through vendor
  capabilities: common configuration, notifications, ISR status, device configuration; and
  the PCI configuration access window (§4.1.4.9, :mod:`.cfg_window`) for drivers that
  cannot reach the BAR.

``notify_off_multiplier`` is 0, so every queue's modern doorbell is the same 2-byte MMIO
address and, with SYNC delivery (the default), **one xioevent serves every queue**: the
payload says which. EVENTFD gives one ioeventfd per queue with the queue index as datamatch
(the Firecracker/QEMU design); POSTED takes doorbells through KVM's coalesced ring.

The guest owns the BAR addresses: when it moves or disables a BAR, the registrations follow
(deassign at the old address, register at the new one, through the xinterface). Interrupts
are INTx (the line asserted while the ISR status is non-zero and dropped when the driver
reads it, §4.1.4.5) until the driver enables MSI-X (:mod:`.msix`, with the VM's routing
table given): then a message per queue and one for configuration changes, each an irqfd.
:mod:`.transport` puts the pieces together.
"""

from .layout import (
    CC_CONFIG_GENERATION,
    CC_CONFIG_MSIX_VECTOR,
    CC_DEVICE_FEATURE,
    CC_DEVICE_FEATURE_SELECT,
    CC_DEVICE_STATUS,
    CC_DRIVER_FEATURE,
    CC_DRIVER_FEATURE_SELECT,
    CC_NUM_QUEUES,
    CC_QUEUE_DESC,
    CC_QUEUE_DEVICE,
    CC_QUEUE_DRIVER,
    CC_QUEUE_ENABLE,
    CC_QUEUE_MSIX_VECTOR,
    CC_QUEUE_NOTIFY_DATA,
    CC_QUEUE_NOTIFY_OFF,
    CC_QUEUE_RESET,
    CC_QUEUE_SELECT,
    CC_QUEUE_SIZE,
    COMMON_OFFSET,
    DEVICE_OFFSET,
    ISR_OFFSET,
    L_CONFIG,
    L_DEVICE_FEATURES,
    L_DEVICE_STATUS,
    L_DRIVER_FEATURES,
    L_ISR,
    L_QUEUE_ADDRESS,
    L_QUEUE_NOTIFY,
    L_QUEUE_SELECT,
    L_QUEUE_SIZE,
    LEGACY_BAR,
    MODERN_BAR,
    NOTIFY_OFFSET,
    VIRTIO_PCI_VENDOR,
    pci_device_id,
)
from .transport import VirtioPci

__all__ = [
    "CC_CONFIG_GENERATION", "CC_CONFIG_MSIX_VECTOR", "CC_DEVICE_FEATURE",
    "CC_DEVICE_FEATURE_SELECT", "CC_DEVICE_STATUS", "CC_DRIVER_FEATURE",
    "CC_DRIVER_FEATURE_SELECT", "CC_NUM_QUEUES", "CC_QUEUE_DESC", "CC_QUEUE_DEVICE",
    "CC_QUEUE_DRIVER", "CC_QUEUE_ENABLE", "CC_QUEUE_MSIX_VECTOR", "CC_QUEUE_NOTIFY_DATA",
    "CC_QUEUE_NOTIFY_OFF", "CC_QUEUE_RESET", "CC_QUEUE_SELECT", "CC_QUEUE_SIZE",
    "COMMON_OFFSET", "DEVICE_OFFSET", "ISR_OFFSET", "LEGACY_BAR", "L_CONFIG",
    "L_DEVICE_FEATURES", "L_DEVICE_STATUS", "L_DRIVER_FEATURES", "L_ISR", "L_QUEUE_ADDRESS",
    "L_QUEUE_NOTIFY", "L_QUEUE_SELECT", "L_QUEUE_SIZE", "MODERN_BAR", "NOTIFY_OFFSET",
    "VIRTIO_PCI_VENDOR", "VirtioPci", "pci_device_id",
]
