"""The split virtqueue against a driver written in Python that lays its rings and buffers in
the real guest RAM of a real ``xi.Machine`` (written through the xinterface, as a guest's
driver writes them): chains, zero-copy views, indexes, suppression, and every hostile case."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, MEMORY, Echo, Rig, changes, rig
from xinterface.virtio import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    Interrupt,
    Status,
    VirtioDevice,
    VirtQueue,
)
from xinterface.virtio.chain import DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from xinterface.virtio.chain import VIRTQ_DESC_F_WRITE as W
from xinterface.virtio.driver import QueueDriver, bring_up
from xinterface.virtio.queue import VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY
from xinterface.virtio.rng import VirtioRng

pytestmark = needs_kvm
N = VIRTQ_DESC_F_NEXT
I = VIRTQ_DESC_F_INDIRECT  # noqa: E741
MODERN = 1 << VIRTIO_F_VERSION_1
OUTSIDE = 0x4000_0000  # no RAM there (the machines here have 2 MiB)


def test_echo_round_trip_with_zero_copy_views() -> None:
    seen: dict[str, object] = {}

    class Probe(Echo):
        def handle(self, queue: VirtQueue) -> None:
            for chain in queue:
                seen["readonly"] = all(v.readonly for v in chain.readable)
                seen["writable"] = not any(v.readonly for v in chain.writable)
                chain.writable[0][:2] = b"ok"     # lands in guest RAM at once: no copy
                seen["in_ram"] = self.intf.copy_from(BUF + 0x100, 2) if self.intf else None
                seen["used_flags"] = r.queue.used_flags
                try:
                    chain.readable[0][:1] = b"X"
                except TypeError:
                    seen["refused"] = True
                queue.add_used(chain, 2)

    # Without EVENT_IDX, so that notifications are turned off with used.flags (§2.7.10).
    with rig(Probe(), features=MODERN | 1 << VIRTIO_F_INDIRECT_DESC) as r:
        r.intf.copy_to(BUF, b"ping")
        head = r.queue.post([(BUF, 4, False), (BUF + 0x100, 16, True)])
        r.device.notify(0)
        assert r.queue.used() == [(head, 2)]
        assert seen == {"readonly": True, "writable": True, "in_ram": b"ok", "refused": True,
                        "used_flags": VIRTQ_USED_F_NO_NOTIFY}
        assert r.intf.copy_from(BUF, 4) == b"ping"
        assert r.queue.used_flags == 0        # notifications on again once it is done
        assert r.interrupts == [Interrupt.USED]


def test_used_len_is_capped_at_the_writable_bytes() -> None:
    class Liar(Echo):
        def handle(self, queue: VirtQueue) -> None:
            for chain in queue:
                queue.add_used(chain, 1 << 20)

    with rig(Liar()) as r:
        r.queue.post([(BUF, 4, False), (BUF + 0x100, 16, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 16)]


def test_a_chain_is_given_back_once() -> None:
    class Twice(Echo):
        def handle(self, queue: VirtQueue) -> None:
            for chain in queue:
                queue.add_used(chain, 0)
                queue.add_used(chain, 0)

    with rig(Twice()) as r:
        r.queue.post([(BUF, 4, False)])
        with pytest.raises(ValueError, match="given back already"):
            r.device.notify(0)   # a device bug: on a vCPU it stops the machine, loudly
        assert r.queue.used() == [(0, 0)]


def test_add_used_by_head() -> None:
    class ByHead(Echo):
        def handle(self, queue: VirtQueue) -> None:
            for chain in queue:
                head = chain.head
                chain.write(b"late")
                chain.release()
                queue.add_used(head, 4)

    with rig(ByHead()) as r:
        r.queue.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 4)]
        assert r.intf.copy_from(BUF + 0x100, 4) == b"late"


def test_free_running_indexes_wrap_at_65536() -> None:
    with rig() as r:
        start = 0xFFFE
        vq = r.device.queues[0]
        vq.next_avail = vq.next_used = start
        r.queue.avail_idx = r.queue.last_used = start
        r.intf.copy_to(r.queue.avail_addr + 2, struct.pack("<H", start))
        r.intf.copy_to(r.queue.used_addr + 2, struct.pack("<H", start))
        for k in range(5):
            r.intf.copy_to(BUF + 16 * k, bytes([65 + k]) * 4)
            r.queue.post([(BUF + 16 * k, 4, False), (BUF + 0x1000 + 16 * k, 4, True)])
            r.device.notify(0)
        assert len(r.queue.used()) == 5
        assert r.queue.used_idx == 3
        assert r.intf.copy_from(BUF + 0x1000, 16 * 5)[::16] == b"ABCDE"


def test_a_chain_may_end_in_an_indirect_table() -> None:
    # §2.7.5.3.2: zero or more chained descriptors followed by a single INDIRECT one.
    with rig() as r:
        table = BUF + 0x800
        r.intf.copy_to(table, DESC.pack(BUF + 0x10, 3, N, 1) + DESC.pack(BUF + 0x100, 8, W, 0))
        r.intf.copy_to(BUF, b"abcdef")
        r.queue.write_desc(0, BUF, 3, N, 1)
        r.queue.write_desc(1, table, 32, I | W)   # WRITE on the table descriptor: ignored
        r.intf.copy_to(BUF + 0x10, b"xyz")
        r.queue.make_available(0)
        r.device.notify(0)
        assert r.queue.used() == [(0, 6)]
        assert r.intf.copy_from(BUF + 0x100, 6) == b"abcxyz"


def test_event_idx_asks_for_an_interrupt_only_when_used_event_is_passed() -> None:
    with rig() as r:
        vq = r.device.queues[0]
        assert vq.event_idx
        r.queue.set_used_event(2)     # "interrupt me when the third buffer is used"
        got = []
        for k in range(4):
            r.queue.post([(BUF, 1, False), (BUF + 0x100, 1, True)])
            r.device.notify(0)
            got.append(len(r.interrupts))
            # The device asks for the next notification from the next available index.
            assert r.queue.avail_event == k + 1
        assert got == [1, 1, 2, 2]   # the first ever; then only the one that passed used_event


def test_no_interrupt_flag_suppresses_used_notifications_without_event_idx() -> None:
    features = MODERN | 1 << VIRTIO_F_INDIRECT_DESC
    with rig(features=features) as r:
        assert not r.device.queues[0].event_idx
        r.queue.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
        r.queue.post([(BUF, 1, False), (BUF + 0x100, 1, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 1)] and r.interrupts == []
        r.queue.set_avail_flags(0)
        r.queue.post([(BUF, 1, False), (BUF + 0x100, 1, True)])
        r.device.notify(0)
        assert r.interrupts == [Interrupt.USED]


def test_a_buffer_across_two_memory_regions_is_mapped_in_two_views() -> None:
    seen = []

    class Views(Echo):
        def handle(self, queue: VirtQueue) -> None:
            for chain in queue:
                seen.append([v.nbytes for v in chain.writable])
                queue.add_used(chain, chain.write(chain.read()))

    boundary = 1 << 20
    with rig(Views(), memory=[(0, boundary), (boundary, boundary)]) as r:
        r.intf.copy_to(BUF, bytes(range(256)))
        r.queue.post([(BUF, 256, False), (boundary - 100, 256, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 256)]
        assert seen == [[100, 156]]
        assert r.intf.copy_from(boundary - 100, 256) == bytes(range(256))


def test_zero_length_buffers_carry_nothing() -> None:
    with rig() as r:
        r.intf.copy_to(BUF, b"abc")
        r.queue.post([(BUF, 3, False), (BUF + 0x40, 0, False), (OUTSIDE, 0, True),
                      (BUF + 0x100, 8, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 3)]
        assert r.intf.copy_from(BUF + 0x100, 3) == b"abc"
        assert not r.device.status & Status.DEVICE_NEEDS_RESET


def test_rng_with_only_a_zero_length_buffer_uses_it_with_len_0() -> None:
    with rig(VirtioRng(queue_size=8)) as r:
        r.queue.post([(BUF, 0, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 0)]


def test_iothread_serves_the_queue_off_the_notifying_thread() -> None:
    echo = Echo(iothread=True)
    with rig(echo) as r:
        r.intf.copy_to(BUF, b"hey")
        for _ in range(3):
            r.queue.post([(BUF, 3, False), (BUF + 0x100, 3, True)])
            r.device.notify(0)
        assert len(r.wait_used(3)) == 3
        assert echo.threads == {"virtio-Echo"}
    assert r.device.status == 0   # detached: reset, its thread stopped


# --- hostile drivers ----------------------------------------------------------------------
def _desc(r: Rig, *descs: tuple[int, int, int, int]) -> None:
    for i, d in enumerate(descs):
        r.queue.write_desc(i, *d)
    r.queue.make_available(0)


def _indirect(r: Rig, table: bytes, length: int | None = None, flags: int = I) -> None:
    r.intf.copy_to(BUF + 0x800, table)
    _desc(r, (BUF + 0x800, len(table) if length is None else length, flags, 0))


Hostile = Callable[[Rig], None]
HOSTILE: dict[str, tuple[Hostile, str]] = {
    "readable buffer outside RAM": (
        lambda r: _desc(r, (OUTSIDE, 16, N, 1), (BUF, 16, W, 0)), "not guest RAM"),
    "writable buffer outside RAM": (
        lambda r: _desc(r, (BUF, 16, N, 1), (OUTSIDE, 16, W, 0)), "not guest RAM"),
    "buffer running off the end of RAM": (
        lambda r: _desc(r, (BUF, 16, N, 1), (MEMORY - 8, 16, W, 0)), "not guest RAM"),
    "a loop": (
        lambda r: _desc(r, (BUF, 1, N, 1), (BUF, 1, N, 0)), "longer than 8 descriptors"),
    "next outside the table": (
        lambda r: _desc(r, (BUF, 1, N, 200)), "index 200 is outside the descriptor table"),
    "head outside the table": (
        lambda r: r.queue.make_available(9), "head 9 is outside"),
    "avail.idx jumps past the queue size": (
        lambda r: r.intf.copy_to(r.queue.avail_addr + 2, struct.pack("<H", 9)),
        "more than the size 8"),
    "readable after writable": (
        lambda r: _desc(r, (BUF, 4, W | N, 1), (BUF, 4, 0, 0)), "device-readable descriptor 1"),
    "indirect inside indirect": (
        lambda r: _indirect(r, DESC.pack(BUF + 0x900, 16, I, 0)), "inside an indirect table"),
    "indirect with next": (
        lambda r: _indirect(r, DESC.pack(BUF, 4, 0, 0), flags=I | N), "both INDIRECT and NEXT"),
    "indirect table longer than the queue": (
        lambda r: _indirect(r, DESC.pack(BUF, 4, 0, 0) * 9), "1 to 8 descriptors"),
    "indirect table of a partial descriptor": (
        lambda r: _indirect(r, DESC.pack(BUF, 4, 0, 0), length=24), "1 to 8 descriptors"),
    "indirect table outside RAM": (
        lambda r: _desc(r, (OUTSIDE, 32, I, 0)), "indirect table not in guest RAM"),
    "loop inside an indirect table": (
        lambda r: _indirect(r, DESC.pack(BUF, 1, N, 1) + DESC.pack(BUF, 1, N, 0)),
        "longer than 2 descriptors"),
    "chain over 4 GiB": (
        lambda r: _desc(r, (BUF, 0xFFFF_FFFF, N, 1), (BUF, 0xFFFF_FFFF, W, 0)),
        "longer than 2^32 bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_chain_puts_the_device_in_needs_reset_and_writes_nothing(case: str) -> None:
    build, message = HOSTILE[case]
    with rig() as r:
        build(r)
        before = r.snapshot()
        r.device.notify(0)
        assert r.device.status & Status.DEVICE_NEEDS_RESET
        assert r.device.error is not None and message in r.device.error
        assert r.interrupts == [Interrupt.CONFIG]   # §2.1.2, since DRIVER_OK is set
        # Nothing written but the used ring's flags (NO_NOTIFY while serving): no used
        # element, no used.idx, no byte of any buffer.
        used_flags = (r.queue.used_addr, r.queue.used_addr + 2)
        assert all(used_flags[0] <= a and b <= used_flags[1]
                   for a, b in changes(before, r.snapshot()))
        # Broken until reset: notifications are ignored...
        r.device.notify(0)
        assert r.device.stats["notify_ignored"] == 1
        # ...and a reset and a new initialisation bring it back.
        r.device.set_status(0)
        assert r.device.status == 0 and r.device.error is None


def test_indirect_descriptor_without_the_feature_is_refused() -> None:
    with rig(features=MODERN | 1 << VIRTIO_F_EVENT_IDX) as r:
        _indirect(r, DESC.pack(BUF, 4, 0, 0))
        r.device.notify(0)
        assert r.device.error is not None and "without VIRTIO_F_INDIRECT_DESC" in r.device.error


@pytest.mark.parametrize(("size", "desc", "message"), [
    (6, 0x10000, "not a power of two"),
    (16, 0x10000, "not a power of two from 1 to 8"),
    (0, 0x10000, "size 0"),
    (8, 0x10008, "not 16-byte aligned"),
    (8, OUTSIDE, "ring not in guest RAM"),
    (8, MEMORY - 64, "ring not in guest RAM"),
])
def test_unusable_queue_configuration_is_refused(size: int, desc: int, message: str) -> None:
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        dev: VirtioDevice = Echo(8)
        dev.connect(intf, lambda kind, queue=None: None)
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        dev.set_driver_features(1, 1)
        dev.set_status(dev.status | Status.FEATURES_OK)
        q = dev.queues[0]
        q.size, q.desc_addr, q.avail_addr, q.used_addr = size, desc, 0x11000, 0x12000
        dev.set_queue_ready(0, True)
        assert not q.ready
        assert dev.status & Status.DEVICE_NEEDS_RESET
        assert dev.error is not None and message in dev.error
        dev.disconnect()


# --- rings across two adjacent memory regions (any gpa is the driver's choice, §2.7) -------
BOUNDARY = 1 << 20


@pytest.mark.parametrize(("ring", "base"), [
    ("descriptor table", BOUNDARY - 64),     # 128 bytes: half in each region
    ("available ring", BOUNDARY - 144),      # at BOUNDARY - 16, 22 bytes long
    ("used ring", BOUNDARY - 176),           # at BOUNDARY - 24: element 2 straddles
])
def test_a_ring_across_two_adjacent_regions_is_served(ring: str, base: int) -> None:
    with xi.Machine(memory=[(0, BOUNDARY), (BOUNDARY, BOUNDARY)]) as m:
        intf = xi.bind(m)
        dev = Echo(8)
        q = QueueDriver(intf, base, 8)
        spans = {"descriptor table": (q.desc_addr, q.avail_addr),
                 "available ring": (q.avail_addr, q.avail_addr + 22),
                 "used ring": (q.used_addr, q.end)}[ring]
        assert spans[0] < BOUNDARY < spans[1]
        with pytest.raises(xi.XInterfaceError):
            intf.vmap(spans[0], spans[1] - spans[0])   # one view cannot map it
        assert bring_up(dev, intf, [q]) & Status.DRIVER_OK, dev.error
        for k in range(20):   # more than the queue size: every slot, and wrapping
            data = bytes([k]) * (k + 1)
            intf.copy_to(BUF, data)
            head = q.post([(BUF, len(data), False), (BUF + 0x100, 64, True)])
            dev.notify(0)
            assert q.used() == [(head, len(data))], (k, dev.error)
            assert intf.copy_from(BUF + 0x100, len(data)) == data
            assert q.avail_event == q.avail_idx     # EVENT_IDX: written across the split
        assert not dev.status & Status.DEVICE_NEEDS_RESET
        dev.disconnect()
