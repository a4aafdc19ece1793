"""virtio-net through the calls its transports make, with the Python driver writing real
guest RAM (xinterface/virtio/driver.py) and the unprivileged backends on the other side."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from xinterface.errors import XInterfaceError
from xinterface.virtio import VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, Interrupt, Status
from xinterface.virtio.driver import QueueDriver, bring_up
from xinterface.virtio.net import (
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    CallbackBackend,
    SocketBackend,
    VirtioNet,
    parse_mac,
)
from xinterface.virtio.net.device import LEGACY_NET_HDR_SIZE, MAX_FRAME, NET_HDR

pytestmark = needs_kvm
RX_RING, TX_RING = 0x10000, 0x18000
RX_BUF, TX_BUF = 0x40000, 0x100000
MEMORY = 4 << 20
SIZE = 16
MODERN = 1 << VIRTIO_F_VERSION_1
BASE = MODERN | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
MRG = 1 << VIRTIO_NET_F_MRG_RXBUF
HDR = 12


def frame(n: int, seed: int = 0) -> bytes:
    """An Ethernet frame of ``n`` bytes: broadcast, our MAC, EtherType 0x88b5 (local)."""
    head = b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x88\xb5"
    return head + bytes((i * 7 + seed) & 0xFF for i in range(n - len(head)))


@dataclass
class Rig:
    intf: xi.XInterface
    net: VirtioNet
    rx: QueueDriver
    tx: QueueDriver
    peer: socket.socket
    interrupts: list[Interrupt] = field(default_factory=list)

    def post_rx(self, sizes: list[int]) -> list[tuple[int, int]]:
        """One receive chain (one device-writable buffer) per size; (head, gpa) each."""
        out = []
        for size in sizes:
            gpa = RX_BUF + 0x2000 * (self.rx.avail_idx % SIZE)
            out.append((self.rx.post([(gpa, size, True)]), gpa))
        return out

    def send(self, data: bytes, header: bytes = bytes(HDR)) -> int:
        """Transmit ``header + data`` as one chain (header and frame in two buffers)."""
        self.intf.copy_to(TX_BUF, header)
        self.intf.copy_to(TX_BUF + 0x1000, data)
        head = self.tx.post([(TX_BUF, len(header), False), (TX_BUF + 0x1000, len(data), False)])
        self.net.notify(1)
        return head

    def wait_rx(self, n: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        end = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < end:
            got += self.rx.used()
            time.sleep(0.001)
        return got


@contextmanager
def rig(features: int = BASE | MRG, *, mergeable: bool = True,
        backend: Callable[[], tuple[object, socket.socket]] | None = None) -> Iterator[Rig]:
    backend_, peer = backend() if backend else SocketBackend.pair()
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        net = VirtioNet(backend_, mergeable=mergeable)  # type: ignore[arg-type]
        rx, tx = QueueDriver(intf, RX_RING, SIZE), QueueDriver(intf, TX_RING, SIZE)
        r = Rig(intf, net, rx, tx, peer)
        status = bring_up(net, intf, [rx, tx], features=features, interrupt=r.interrupts.append)
        assert status & Status.DRIVER_OK
        try:
            yield r
        finally:
            net.close()
            peer.close()


def test_configuration_space_holds_the_mac_and_link_up() -> None:
    net = VirtioNet(SocketBackend.pair()[0], mac="52:54:00:ab:cd:ef")
    assert net.read_config(0, 6) == bytes.fromhex("525400abcdef")
    assert net.read_config(6, 2) == b"\x01\x00"          # VIRTIO_NET_S_LINK_UP
    offered = net.device_features
    assert offered & (1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | MRG) == (
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | MRG)
    assert not VirtioNet(SocketBackend.pair()[0], mergeable=False).device_features & MRG
    net.write_config(0, b"\x02" * 6)                      # a modern driver may not write it
    assert net.read_config(0, 6) == bytes.fromhex("525400abcdef")
    net.close()


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01",
                                 "5254:00:12:34:56:7"])
def test_bad_mac_is_einval(mac: str) -> None:
    with pytest.raises(XInterfaceError) as info:
        parse_mac(mac)
    assert info.value.argument == "mac"


def test_transmit_sends_the_frame_without_its_header() -> None:
    with rig() as r:
        data = frame(60)
        head = r.send(data, header=b"\xaa" * HDR)   # the driver's header is not forwarded
        assert r.peer.recv(4096) == data
        assert r.tx.used() == [(head, 0)]
        assert r.net.stats["tx_packets"] == 1 and r.net.stats["tx_bytes"] == 60
        assert r.interrupts == [Interrupt.USED]


def test_transmit_header_and_frame_in_one_buffer() -> None:
    with rig() as r:
        data = frame(100, seed=3)
        r.intf.copy_to(TX_BUF, bytes(HDR) + data)
        head = r.tx.post([(TX_BUF, HDR + len(data), False)])
        r.net.notify(1)
        assert r.peer.recv(4096) == data
        assert r.tx.used() == [(head, 0)]


def test_receive_writes_header_and_frame_and_interrupts() -> None:
    with rig() as r:
        (head, gpa), = r.post_rx([2048])
        r.net.notify(0)
        data = frame(200)
        r.peer.send(data)
        assert r.wait_rx(1) == [(head, HDR + 200)]
        got = r.intf.copy_from(gpa, HDR + 200)
        assert NET_HDR.unpack(got[:HDR]) == (0, 0, 0, 0, 0, 0, 1)   # num_buffers 1
        assert got[HDR:] == data
        assert Interrupt.USED in r.interrupts
        assert r.net.stats["rx_packets"] == 1


def test_frames_wait_in_the_backend_until_buffers_come() -> None:
    with rig() as r:
        r.peer.send(frame(80, 1))
        r.peer.send(frame(90, 2))
        time.sleep(0.2)
        assert r.rx.used() == [] and r.net.stats["rx_packets"] == 0
        posted = r.post_rx([1514, 1514])
        r.net.notify(0)        # the driver's notification for new buffers
        assert r.wait_rx(2) == [(posted[0][0], HDR + 80), (posted[1][0], HDR + 90)]
        assert r.intf.copy_from(posted[1][1] + HDR, 90) == frame(90, 2)


def test_mergeable_frame_spans_buffers_published_together() -> None:
    with rig() as r:
        posted = r.post_rx([1000, 1000, 1000, 1000])
        r.net.notify(0)
        data = frame(2500)
        r.peer.send(data)
        used = r.wait_rx(3)
        assert used == [(posted[0][0], 1000), (posted[1][0], 1000), (posted[2][0], HDR + 500)]
        first = r.intf.copy_from(posted[0][1], 1000)
        assert NET_HDR.unpack(first[:HDR])[6] == 3             # num_buffers
        got = first[HDR:] + r.intf.copy_from(posted[1][1], 1000) + r.intf.copy_from(
            posted[2][1], HDR + 500)
        assert got == data
        assert r.rx.used_idx == 3


def test_mergeable_frame_waits_for_enough_buffers() -> None:
    with rig(BASE | MRG | 1 << VIRTIO_F_EVENT_IDX) as r:
        posted = r.post_rx([1000])
        r.net.notify(0)
        r.peer.send(frame(1500))
        time.sleep(0.2)
        assert r.rx.used() == []          # one buffer is too few: nothing is half-delivered
        # With EVENT_IDX the device asked to hear of the next buffer, past the one it has.
        assert r.rx.avail_event == 1
        posted += r.post_rx([1000])
        r.net.notify(0)
        assert r.wait_rx(2) == [(posted[0][0], 1000), (posted[1][0], HDR + 500)]


def test_receive_buffer_too_small_drops_the_frame_and_keeps_the_buffer() -> None:
    with rig(BASE, mergeable=False) as r:
        (head, gpa), = r.post_rx([100])
        r.net.notify(0)
        r.peer.send(frame(500))
        r.peer.send(frame(60, 9))
        assert r.wait_rx(1) == [(head, HDR + 60)]   # the same buffer took the next frame
        assert r.intf.copy_from(gpa + HDR, 60) == frame(60, 9)
        assert r.net.stats["rx_too_small"] == 1 and r.net.stats["rx_packets"] == 1


def test_mergeable_frame_larger_than_the_whole_queue_is_dropped() -> None:
    with rig() as r:
        r.post_rx([64] * SIZE)
        r.net.notify(0)
        r.peer.send(frame(SIZE * 64))         # the header does not leave room for it
        r.peer.send(frame(40, 5))
        used = r.wait_rx(1)
        assert len(used) == 1 and used[0][1] == HDR + 40
        assert r.net.stats["rx_too_small"] == 1


def test_legacy_driver_without_mergeable_buffers_gets_a_10_byte_header() -> None:
    backend, peer = SocketBackend.pair()
    with xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        net = VirtioNet(backend)
        net.legacy = True
        rx, tx = QueueDriver(intf, RX_RING, SIZE), QueueDriver(intf, TX_RING, SIZE)
        net.connect(intf, lambda kind, queue=None: None, legacy=True)
        net.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        net.set_driver_features(0, 1 << VIRTIO_NET_F_MAC)
        for i, q in enumerate((rx, tx)):
            vq = net.queues[i]
            vq.size, vq.desc_addr, vq.avail_addr, vq.used_addr = (
                q.size, q.desc_addr, q.avail_addr, q.used_addr)
            net.set_queue_ready(i, True)
        net.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK)
        assert net.hdr_len == LEGACY_NET_HDR_SIZE
        head = rx.post([(RX_BUF, 1514, True)])
        net.notify(0)
        peer.send(frame(64))
        end = time.monotonic() + 10
        used: list[tuple[int, int]] = []
        while not used and time.monotonic() < end:
            used = rx.used()
        assert used == [(head, 10 + 64)]
        assert intf.copy_from(RX_BUF + 10, 64) == frame(64)
        intf.copy_to(TX_BUF, bytes(10) + frame(70))
        tx.post([(TX_BUF, 80, False)])
        net.notify(1)
        assert peer.recv(4096) == frame(70)
        net.close()
        peer.close()


def test_transmit_chain_longer_than_a_frame_is_dropped() -> None:
    with rig() as r:
        big = MAX_FRAME + 1
        r.intf.copy_to(TX_BUF, bytes(HDR))
        head = r.tx.post([(TX_BUF, HDR, False), (TX_BUF + 0x1000, big, False)])
        r.net.notify(1)
        assert r.tx.used() == [(head, 0)]
        assert r.net.stats["tx_oversize"] == 1 and r.net.stats["tx_packets"] == 0
        r.send(frame(60))                    # the device goes on
        assert r.peer.recv(4096) == frame(60)
        assert not r.net.status & Status.DEVICE_NEEDS_RESET


def test_transmit_runt_and_headerless_chains_are_dropped() -> None:
    with rig() as r:
        r.send(b"\x01" * 10)                                  # shorter than an Ethernet header
        r.intf.copy_to(TX_BUF, bytes(4))
        r.tx.post([(TX_BUF, 4, False)])                       # shorter than the header
        r.net.notify(1)
        assert r.net.stats["tx_runt"] == 1 and r.net.stats["tx_no_header"] == 1
        assert len(r.tx.used()) == 2
        r.peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            r.peer.recv(4096)


def test_peer_gone_counts_drops_sets_link_down_and_the_device_goes_on() -> None:
    with rig() as r:
        r.post_rx([2048])
        r.net.notify(0)
        r.peer.close()                       # the other end of the wire goes away
        end = time.monotonic() + 10
        while Interrupt.CONFIG not in r.interrupts and time.monotonic() < end:
            time.sleep(0.01)
        assert not r.net.link_up
        assert r.net.read_config(6, 2) == b"\x00\x00"
        assert Interrupt.CONFIG in r.interrupts   # a configuration change notification
        assert r.net.stats["rx_backend"] == 1
        r.send(frame(60))
        assert r.net.stats["tx_backend"] == 1
        assert len(r.tx.used()) == 1              # the chain is given back all the same
        assert not r.net.status & Status.DEVICE_NEEDS_RESET


def test_callback_backend_calls_and_injects() -> None:
    got: list[bytes] = []
    holder: dict[str, CallbackBackend] = {}

    def make() -> tuple[object, socket.socket]:
        b = holder["b"] = CallbackBackend(got.append)
        return b, socket.socket()

    with rig(backend=make) as r:
        r.send(frame(70, 4))
        assert got == [frame(70, 4)]
        (head, gpa), = r.post_rx([2048])
        r.net.notify(0)
        holder["b"].inject(frame(64, 8))
        assert r.wait_rx(1) == [(head, HDR + 64)]
        assert r.intf.copy_from(gpa + HDR, 64) == frame(64, 8)


def test_reset_stops_receiving_until_the_driver_is_back() -> None:
    with rig() as r:
        r.post_rx([2048])
        r.net.set_status(0)
        r.peer.send(frame(60))
        time.sleep(0.2)
        assert r.net.stats["rx_packets"] == 0 and r.rx.used_idx == 0
        rx, tx = QueueDriver(r.intf, RX_RING, SIZE), QueueDriver(r.intf, TX_RING, SIZE)
        assert bring_up(r.net, r.intf, [rx, tx]) & Status.DRIVER_OK
        head = rx.post([(RX_BUF, 2048, True)])
        r.net.notify(0)
        end = time.monotonic() + 10
        used: list[tuple[int, int]] = []
        while not used and time.monotonic() < end:
            used = rx.used()
        assert used == [(head, HDR + 60)]      # the frame waited in the backend


# --- hostile drivers: the device stops (DEVICE_NEEDS_RESET) or drops, the VMM goes on -------
def test_receive_buffer_outside_ram_needs_reset() -> None:
    with rig() as r:
        r.rx.post([(MEMORY + 0x1000, 2048, True)])      # past the end of guest RAM
        r.net.notify(0)
        r.peer.send(frame(60))
        end = time.monotonic() + 10
        # The status is set first, then the interrupt is sent (on the receive thread).
        while Interrupt.CONFIG not in r.interrupts and time.monotonic() < end:
            time.sleep(0.01)
        assert r.net.status & Status.DEVICE_NEEDS_RESET
        assert Interrupt.CONFIG in r.interrupts
        assert r.rx.used_idx == 0                        # nothing was given back
        rx, tx = QueueDriver(r.intf, RX_RING, SIZE), QueueDriver(r.intf, TX_RING, SIZE)
        assert bring_up(r.net, r.intf, [rx, tx]) & Status.DRIVER_OK   # the reset recovers it
        head = rx.post([(RX_BUF, 2048, True)])
        r.net.notify(0)
        r.peer.send(frame(61))
        end = time.monotonic() + 10
        used: list[tuple[int, int]] = []
        while not used and time.monotonic() < end:
            used = rx.used()
        assert used == [(head, HDR + 61)]


def test_receive_chain_of_device_readable_buffers_is_too_small() -> None:
    with rig(BASE, mergeable=False) as r:
        r.rx.post([(RX_BUF, 2048, False)])               # the device may not write there
        r.net.notify(0)
        r.peer.send(frame(60))
        end = time.monotonic() + 10
        while not r.net.stats["rx_too_small"] and time.monotonic() < end:
            time.sleep(0.01)
        assert r.net.stats["rx_too_small"] == 1
        assert r.intf.copy_from(RX_BUF, 64) == bytes(64)  # untouched
        assert not r.net.status & Status.DEVICE_NEEDS_RESET


def test_transmit_descriptor_loop_needs_reset_and_nothing_is_sent() -> None:
    with rig() as r:
        r.intf.copy_to(TX_BUF, bytes(HDR) + frame(60))
        r.tx.write_desc(0, TX_BUF, HDR, 1, 1)             # NEXT -> 1
        r.tx.write_desc(1, TX_BUF + HDR, 60, 1, 0)        # NEXT -> 0: a loop
        r.tx.make_available(0)
        r.net.notify(1)
        assert r.net.status & Status.DEVICE_NEEDS_RESET
        assert r.net.stats["tx_packets"] == 0
        r.peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            r.peer.recv(4096)


def test_available_index_far_ahead_needs_reset() -> None:
    with rig() as r:
        r.intf.copy_to(r.rx.avail_addr + 2, struct.pack("<H", 1000))
        r.net.notify(0)
        r.peer.send(frame(60))
        end = time.monotonic() + 10
        while not r.net.status & Status.DEVICE_NEEDS_RESET and time.monotonic() < end:
            time.sleep(0.01)
        assert r.net.status & Status.DEVICE_NEEDS_RESET


def test_notify_of_a_queue_that_does_not_exist_is_ignored() -> None:
    with rig() as r:
        r.net.notify(2)
        r.net.notify(0xFFFF)
        assert r.net.stats["notify_ignored"] == 2
        assert not r.net.status & Status.DEVICE_NEEDS_RESET
