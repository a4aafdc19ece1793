"""virtio-net: the device (``device.py``) and its backends: a TAP (``tap.py``), or, without
privileges, a socket or a Python callable (``backend.py``)."""

from .backend import CallbackBackend, NetBackend, SocketBackend
from .device import (
    DEFAULT_MAC,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    VirtioNet,
    format_mac,
    parse_mac,
)
from .tap import TapBackend

__all__ = [
    "DEFAULT_MAC",
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_MRG_RXBUF",
    "VIRTIO_NET_F_STATUS",
    "CallbackBackend",
    "NetBackend",
    "SocketBackend",
    "TapBackend",
    "VirtioNet",
    "format_mac",
    "parse_mac",
]
