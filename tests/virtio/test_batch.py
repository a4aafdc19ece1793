"""One doorbell, one batch: every available chain served, ``used.idx`` stored once, one
interrupt decision that honours EVENT_IDX; against the Python driver on real guest RAM."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, Echo, rig
from xinterface.virtio import VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, Interrupt, VirtQueue
from xinterface.virtio.blk import REQ_HEADER, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VirtioBlk
from xinterface.virtio.chain import VIRTQ_DESC_F_INDIRECT
from xinterface.virtio.driver import QueueDriver

pytestmark = needs_kvm
CHAINS = 32


class Watcher(Echo):
    """An echo device that reads ``used.idx`` from guest RAM after each chain it gives back,
    as a driver polling the ring would."""

    def __init__(self) -> None:
        super().__init__(queue_size=CHAINS)
        self.used_seen: list[int] = []
        self.used_idx: Callable[[], int] = lambda: -1

    def handle(self, queue: VirtQueue) -> None:
        for chain in queue:
            queue.add_used(chain, chain.write(chain.read()))
            self.used_seen.append(self.used_idx())


def _post_all(queue: QueueDriver, n: int) -> None:
    for k in range(n):
        queue.post([(BUF + 0x40 * k, 4, False), (BUF + 0x4000 + 0x40 * k, 4, True)])


def test_a_doorbell_serves_every_chain_and_publishes_used_idx_once() -> None:
    dev = Watcher()
    with rig(dev, size=CHAINS) as r:
        dev.used_idx = lambda: r.queue.used_idx
        _post_all(r.queue, CHAINS)
        r.device.notify(0)
        # The driver saw none of them while the batch was served, then all of them.
        assert dev.used_seen == [0] * CHAINS
        assert [ident for ident, _ in r.queue.used()] == [2 * k for k in range(CHAINS // 2)] * 2
        assert r.interrupts == [Interrupt.USED]


def test_one_interrupt_per_batch_honours_used_event() -> None:
    dev = Watcher()
    with rig(dev, size=CHAINS) as r:
        dev.used_idx = lambda: r.queue.used_idx
        _post_all(r.queue, 4)
        r.device.notify(0)
        assert r.interrupts == [Interrupt.USED]      # the first ever
        r.queue.used()
        # "Interrupt me once the 10th buffer is used": a batch ending at 8 does not pass it,
        # the batch that takes used.idx from 8 to 12 does, once.
        r.queue.set_used_event(9)
        _post_all(r.queue, 4)
        r.device.notify(0)
        assert r.interrupts == [Interrupt.USED] and r.queue.used_idx == 8
        _post_all(r.queue, 4)
        r.device.notify(0)
        assert r.interrupts == [Interrupt.USED] * 2 and r.queue.used_idx == 12


def test_a_broken_chain_in_a_batch_leaves_the_ones_before_it_used() -> None:
    # EVENT_IDX without INDIRECT_DESC: an INDIRECT descriptor breaks its chain.
    features = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_EVENT_IDX
    dev = Watcher()
    with rig(dev, size=CHAINS, features=features) as r:
        _post_all(r.queue, 3)
        r.queue.write_desc(6, BUF, 16, VIRTQ_DESC_F_INDIRECT)
        r.queue.make_available(6)
        r.device.notify(0)
        assert r.device.error is not None and "INDIRECT" in r.device.error
        assert [ident for ident, _ in r.queue.used()] == [0, 2, 4]


def test_blk_batch_from_many_threads_is_served_once_each(tmp_path: Path) -> None:
    """Doorbells from several threads at once (vCPUs notifying together): each request is
    served exactly once and every status is OK."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * (64 << 10 >> 8))
    dev = VirtioBlk(image, queue_size=CHAINS)
    try:
        with rig(dev, size=CHAINS) as r:
            heads = []
            for k in range(CHAINS // 4):
                hdr = BUF + 0x1000 * k
                r.intf.copy_to(hdr, REQ_HEADER.pack(VIRTIO_BLK_T_IN, 0, k))
                heads.append(r.queue.post([(hdr, REQ_HEADER.size, False),
                                           (hdr + 0x100, 512, True),
                                           (hdr + 0x400, 1, True)]))
            threads = [threading.Thread(target=r.device.notify, args=(0,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            used = r.queue.used()
            assert sorted(ident for ident, _ in used) == sorted(heads)
            assert all(length == 513 for _, length in used)
            for k in range(CHAINS // 4):
                hdr = BUF + 0x1000 * k
                assert r.intf.copy_from(hdr + 0x400, 1) == bytes([VIRTIO_BLK_S_OK])
                assert r.intf.copy_from(hdr + 0x100, 512) == (bytes(range(256)) * 2)
    finally:
        dev.close()
