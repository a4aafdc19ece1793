"""Virtio on the xinterface (virtio 1.2): split virtqueues, the device base class, the
virtio-mmio transport, and virtio-rng and virtio-blk.

Everything here is an xinterface client: guest memory through ``copy_*``/``vmap``/``sgmap``,
registers through ``iorange``, doorbells through ``ioevent`` (xioevent), interrupts through a
callable the board gives (an irqfd's ``trigger``).
"""

from .blk import VirtioBlk
from .chain import DescriptorChain, VirtqueueError
from .device import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Interrupt,
    Status,
    VirtioDevice,
)
from .mmio import VirtioMmio
from .queue import VirtQueue
from .rng import VirtioRng

__all__ = [
    "VIRTIO_F_EVENT_IDX",
    "VIRTIO_F_INDIRECT_DESC",
    "VIRTIO_F_VERSION_1",
    "DescriptorChain",
    "Interrupt",
    "Status",
    "VirtQueue",
    "VirtioBlk",
    "VirtioDevice",
    "VirtioMmio",
    "VirtioRng",
    "VirtqueueError",
]
