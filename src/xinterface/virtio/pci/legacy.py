"""The legacy interface of a transitional virtio-pci function (virtio 1.2 §4.1.4.10): the
0.9.5 register block in I/O BAR0. Its doorbell is a 2-byte ``outw`` of the queue index to
QueueNotify (the seed's PIO xioevent with its payload, registered by the transport).

Each register takes an access of its own width at its own offset only; device configuration
follows the block. The ISR status clears when read (§4.1.4.5.1). While MSI-X is enabled the
block has two more registers, the configuration and queue vectors at 0x14 and 0x16, and the
device configuration moves 4 bytes on, to 0x18 (§4.1.4.10).
"""

from __future__ import annotations

from ..transport import (
    Field,
    RegisterTable,
    place_legacy_queue,
    selected_queue,
)
from .layout import (
    L_CONFIG,
    L_CONFIG_MSIX,
    L_CONFIG_VECTOR,
    L_DEVICE_FEATURES,
    L_DEVICE_STATUS,
    L_DRIVER_FEATURES,
    L_ISR,
    L_QUEUE_ADDRESS,
    L_QUEUE_NOTIFY,
    L_QUEUE_SELECT,
    L_QUEUE_SIZE,
    L_QUEUE_VECTOR,
    LEGACY_ALIGN,
    LEGACY_PAGE,
)
from .state import PciState


class LegacyRegisters:
    """BAR0's block over ``state``."""

    def __init__(self, state: PciState) -> None:
        self.state = state
        device = state.device
        self.table = RegisterTable([
            Field(L_DEVICE_FEATURES, 4, lambda: device.device_features),
            Field(L_DRIVER_FEATURES, 4, lambda: device.driver_features,
                  lambda value: device.set_driver_features(0, value)),
            Field(L_QUEUE_ADDRESS, 4, self._queue_pfn, self._set_queue_pfn),
            Field(L_QUEUE_SIZE, 2, self._queue_size),
            Field(L_QUEUE_SELECT, 2, lambda: state.queue_select, self._select),
            Field(L_QUEUE_NOTIFY, 2, lambda: 0, device.notify),
            Field(L_DEVICE_STATUS, 1, lambda: device.status, state.set_device_status),
            # L_ISR is served before the table: its read clears it.
        ], L_CONFIG)
        # Only while MSI-X is enabled, before the device configuration that then follows.
        self.vectors = RegisterTable([
            Field(L_CONFIG_VECTOR, 2, state.config_vector, state.set_config_vector),
            Field(L_QUEUE_VECTOR, 2, state.queue_vector, state.set_queue_vector),
        ], L_CONFIG_MSIX)

    def _select(self, value: int) -> None:
        self.state.queue_select = value

    def _queue_pfn(self) -> int:
        # A queue placed through the modern interface may sit above 16 TiB; the field then
        # shows what of its page number fits in 32 bits, as hardware would.
        q = selected_queue(self.state.device, self.state.queue_select)
        return q.desc_addr // LEGACY_PAGE if q is not None and q.ready else 0

    def _queue_size(self) -> int:
        q = selected_queue(self.state.device, self.state.queue_select)
        return q.max_size if q is not None else 0

    def _set_queue_pfn(self, pfn: int) -> None:
        # A legacy queue always has its maximum size (there is no QueueSize to write).
        state = self.state
        q = selected_queue(state.device, state.queue_select)
        place_legacy_queue(state.device, state.queue_select, pfn * LEGACY_PAGE, LEGACY_ALIGN,
                           state.stats, size=q.max_size if q is not None else None)

    def _config_start(self) -> int:
        return L_CONFIG_MSIX if self.state.msix_enabled else L_CONFIG

    def read(self, offset: int, size: int) -> bytes:
        state = self.state
        start = self._config_start()
        if offset >= start:
            return state.device.read_config(offset - start, size)
        if offset == L_ISR:
            return state.read_isr().ljust(size, b"\0")
        with state.lock:
            if offset >= L_CONFIG:
                return self.vectors.read(offset, size)
            return self.table.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        state = self.state
        device = state.device
        start = self._config_start()
        if offset >= start:
            device.write_config(offset - start, data)
            return
        with state.lock:
            if device.status == 0:
                device.legacy = True  # a driver of the 0.9.5 interface is talking
            table = self.vectors if offset >= L_CONFIG else self.table
            if not table.write(offset, data, partial=False):
                state.stats["bad_access"] += 1
