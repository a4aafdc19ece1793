"""The device base class: feature negotiation, the status state machine, reset, the
configuration space and notifications, through the calls a transport makes."""

from __future__ import annotations

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, MEMORY, Echo, rig
from xinterface.virtio import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Interrupt,
    Status,
    VirtioDevice,
)

pytestmark = needs_kvm
MODERN = 1 << VIRTIO_F_VERSION_1
A, D, F, OK = Status.ACKNOWLEDGE, Status.DRIVER, Status.FEATURES_OK, Status.DRIVER_OK


def started(features: int, legacy: bool = False) -> VirtioDevice:
    dev = Echo()
    dev.legacy = legacy
    dev.set_status(A | D)
    dev.set_driver_features(0, features & 0xFFFFFFFF)
    dev.set_driver_features(1, features >> 32)
    dev.set_status(A | D | F)
    return dev


def test_offered_features_are_the_core_ones_plus_the_devices() -> None:
    dev = VirtioDevice(features=1 << 5)
    assert dev.device_features == (1 << 5 | 1 << VIRTIO_F_INDIRECT_DESC
                                   | 1 << VIRTIO_F_EVENT_IDX | MODERN)
    dev.legacy = True
    assert dev.device_features == 1 << 5 | 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX


def test_features_ok_is_set_for_offered_features_with_version_1() -> None:
    dev = started(MODERN | 1 << VIRTIO_F_EVENT_IDX)
    assert dev.status == A | D | F
    assert dev.negotiated(VIRTIO_F_EVENT_IDX) and not dev.negotiated(VIRTIO_F_INDIRECT_DESC)


@pytest.mark.parametrize("features", [MODERN | 1 << 3, MODERN | 1 << 40, 1 << 29, 1 << 64 | MODERN],
                         ids=["device bit not offered", "reserved bit", "no VERSION_1",
                              "word 2"])
def test_features_ok_is_refused(features: int) -> None:
    dev = Echo()
    dev.set_status(A | D)
    for word in range(3):
        dev.set_driver_features(word, features >> (32 * word) & 0xFFFFFFFF)
    dev.set_status(A | D | F)
    assert dev.status == A | D           # the driver reads it back and sees no FEATURES_OK
    dev.set_status(A | D | OK)
    assert dev.status == A | D           # and DRIVER_OK cannot follow
    assert dev.stats["features_refused"] == 1 and dev.stats["driver_ok_refused"] == 1


def test_features_are_fixed_once_features_ok_is_set() -> None:
    dev = started(MODERN)
    dev.set_driver_features(0, 1 << VIRTIO_F_EVENT_IDX)
    assert dev.driver_features == MODERN


def test_status_bits_only_accumulate_and_needs_reset_is_the_devices() -> None:
    dev = started(MODERN)
    dev.set_status(A)                                        # clearing: not possible
    assert dev.status == A | D | F
    dev.set_status(A | D | F | Status.DEVICE_NEEDS_RESET)   # the driver cannot set it
    assert dev.status == A | D | F
    dev.set_status(A | D | F | Status.FAILED)
    assert dev.status & Status.FAILED and not dev.running


def test_legacy_device_takes_features_at_driver_ok() -> None:
    dev = Echo()
    dev.legacy = True
    dev.set_status(A | D)
    dev.set_driver_features(0, 1 << VIRTIO_F_EVENT_IDX | 1 << 3)
    dev.set_status(A | D | F)
    assert dev.status == A | D            # no FEATURES_OK in the legacy interface
    dev.set_status(A | D | OK)
    assert dev.status == A | D | OK
    assert dev.driver_features == 1 << VIRTIO_F_EVENT_IDX   # the unoffered bit is dropped


def test_reset_brings_everything_back() -> None:
    with rig() as r:
        r.queue.post([(BUF, 1, False), (BUF + 0x100, 1, True)])
        r.device.notify(0)
        r.device.set_needs_reset("test")
        r.device.set_status(0)
        dev = r.device
        assert (dev.status, dev.driver_features, dev.error) == (0, 0, None)
        q = dev.queues[0]
        assert (q.ready, q.next_avail, q.next_used, q.size, q.mapped) == (False, 0, 0, 8, False)


def test_notifications_the_device_ignores() -> None:
    with rig() as r:
        dev = r.device
        r.queue.post([(BUF, 1, False), (BUF + 0x100, 1, True)])
        dev.notify(1)          # no such queue
        dev.notify(-1)
        dev.notify(1 << 31)
        dev.set_queue_ready(0, False)
        dev.notify(0)          # not ready
        assert dev.stats["notify_ignored"] == 4 and r.queue.used_idx == 0
    with xi.Machine(memory=MEMORY) as m:
        dev = Echo()
        dev.connect(xi.bind(m), lambda kind, queue=None: None)
        dev.notify(0)          # before DRIVER_OK (§2.1.2: no buffer is consumed)
        assert dev.stats["notify_ignored"] == 1


def test_configuration_space_generation_and_change_notification() -> None:
    class WithConfig(Echo):
        def __init__(self) -> None:
            VirtioDevice.__init__(self, queue_sizes=(8,), config=b"\x01\x02\x03\x04")
            self.seen = []
            self.threads = set()

    with rig(WithConfig()) as r:
        dev = r.device
        assert dev.read_config(0, 4) == b"\x01\x02\x03\x04"
        assert dev.read_config(2, 4) == b"\x03\x04\x00\x00"    # past the end: zeros
        assert dev.read_config(100, 2) == b"\x00\x00"
        gen = dev.config_generation
        dev.update_config(1, b"\xff")
        assert dev.config_generation == gen + 1
        assert dev.read_config(0, 4) == b"\x01\xff\x03\x04"
        assert r.interrupts == [Interrupt.CONFIG]
        dev.write_config(0, b"\x00")          # read-only configuration: dropped
        dev.write_config(2, b"\x00" * 8)      # past the end: dropped
        assert dev.read_config(0, 1) == b"\x01"
        assert dev.stats["config_write_dropped"] == 2
