"""The modern interface of a virtio-pci function (virtio 1.2 §4.1.4): memory BAR4, one page
per structure (common configuration, ISR status, device configuration, notifications).

The common configuration (§4.1.4.3) is a table of its fields, each with its getter and
setter: an access reads or writes the fields it touches. A write may cover part of a field
(a 64-bit queue address as two 32-bit halves); one across two fields is refused.

``notify_off_multiplier`` is 0, so every queue's doorbell is the same 2-byte address; the
transport registers its doorbells there. ``msix_config`` and ``queue_msix_vector`` are the
MSI-X vector numbers (:mod:`.msix`); without MSI-X they read VIRTIO_MSI_NO_VECTOR.
"""

from __future__ import annotations

from collections.abc import Callable

from ..queue import VirtQueue
from ..transport import (
    Field,
    RegisterTable,
    configurable_queue,
    feature_word,
    selected_queue,
    set_driver_feature_word,
)
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
    COMMON_SIZE,
    DEVICE_OFFSET,
    ISR_OFFSET,
    NOTIFY_OFFSET,
)
from .state import PciState


def _dropped(value: int) -> None:
    """A field the driver may write but that changes nothing here (MSI-X vectors without
    MSI-X, and the device's read-only fields)."""


class CommonConfig:
    """struct virtio_pci_common_cfg over ``state``."""

    def __init__(self, state: PciState) -> None:
        self.state = state
        device = state.device
        queue = self._queue
        self.table = RegisterTable([
            Field(CC_DEVICE_FEATURE_SELECT, 4, lambda: state.device_feature_select,
                  self._device_feature_select),
            Field(CC_DEVICE_FEATURE, 4, lambda: feature_word(
                device.device_features, state.device_feature_select), _dropped),
            Field(CC_DRIVER_FEATURE_SELECT, 4, lambda: state.driver_feature_select,
                  self._driver_feature_select),
            Field(CC_DRIVER_FEATURE, 4, lambda: feature_word(
                device.driver_features, state.driver_feature_select),
                lambda value: set_driver_feature_word(device, state.driver_feature_select,
                                                      value)),
            Field(CC_CONFIG_MSIX_VECTOR, 2, state.config_vector, state.set_config_vector),
            Field(CC_NUM_QUEUES, 2, lambda: len(device.queues), _dropped),
            Field(CC_DEVICE_STATUS, 1, lambda: device.status, self._device_status),
            Field(CC_CONFIG_GENERATION, 1, lambda: device.config_generation, _dropped),
            Field(CC_QUEUE_SELECT, 2, lambda: state.queue_select, self._queue_select),
            Field(CC_QUEUE_SIZE, 2, lambda: _get(queue(), "size"), self._setter("size")),
            Field(CC_QUEUE_MSIX_VECTOR, 2, state.queue_vector, state.set_queue_vector),
            Field(CC_QUEUE_ENABLE, 2, lambda: int(_get(queue(), "ready")), self._enable),
            Field(CC_QUEUE_NOTIFY_OFF, 2, lambda: 0, _dropped),
            Field(CC_QUEUE_DESC, 8, lambda: _get(queue(), "desc_addr"),
                  self._setter("desc_addr")),
            Field(CC_QUEUE_DRIVER, 8, lambda: _get(queue(), "avail_addr"),
                  self._setter("avail_addr")),
            Field(CC_QUEUE_DEVICE, 8, lambda: _get(queue(), "used_addr"),
                  self._setter("used_addr")),
            # notify_off_multiplier 0: the data a driver writes is the queue index.
            Field(CC_QUEUE_NOTIFY_DATA, 2, lambda: state.queue_select if queue() is not None else 0,
                  _dropped),
            Field(CC_QUEUE_RESET, 2, lambda: 0, _dropped),   # no VIRTIO_F_RING_RESET
        ], COMMON_SIZE)

    def _queue(self) -> VirtQueue | None:
        return selected_queue(self.state.device, self.state.queue_select)

    def _device_feature_select(self, value: int) -> None:
        self.state.device_feature_select = value

    def _driver_feature_select(self, value: int) -> None:
        self.state.driver_feature_select = value

    def _queue_select(self, value: int) -> None:
        self.state.queue_select = value

    def _device_status(self, value: int) -> None:
        self.state.device.legacy = False
        self.state.set_device_status(value)

    def _setter(self, name: str) -> Callable[[int], None]:
        """A queue field's setter: for a queue that exists and is not live (§4.1.4.3.2)."""
        state = self.state

        def put(value: int) -> None:
            q = configurable_queue(state.device, state.queue_select, state.stats)
            if q is not None:
                setattr(q, name, value)
        return put

    def _enable(self, value: int) -> None:
        state = self.state
        q = configurable_queue(state.device, state.queue_select, state.stats)
        if q is not None and value == 1:
            state.device.set_queue_ready(state.queue_select, True)

    def read(self, offset: int, size: int) -> bytes:
        with self.state.lock:
            return self.table.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        with self.state.lock:
            if not self.table.write(offset, data, partial=True):
                self.state.stats["bad_access"] += 1


def _get(q: VirtQueue | None, name: str) -> int:
    return int(getattr(q, name)) if q is not None else 0


class ModernRegisters:
    """BAR4's structures over ``state``: where each access goes."""

    def __init__(self, state: PciState) -> None:
        self.state = state
        self.common = CommonConfig(state)

    def read(self, offset: int, size: int) -> bytes:
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_SIZE:
            return self.common.read(offset - COMMON_OFFSET, size)
        if offset == ISR_OFFSET:
            return self.state.read_isr().ljust(size, b"\0")
        if DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            return self.state.device.read_config(offset - DEVICE_OFFSET, size)
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        state = self.state
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_SIZE:
            self.common.write(offset - COMMON_OFFSET, data)
        elif DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            state.device.write_config(offset - DEVICE_OFFSET, data)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + 4:
            # A doorbell no event took (another width, or another value in EVENTFD mode).
            state.device.notify(int.from_bytes(data[:2], "little"))
        else:
            state.stats["bad_access"] += 1
