"""The virtio-net link state against a misbehaving or dying backend: an empty datagram, a
send that fails for a while, a TAP taken down and up, a frame in more pieces than the
kernel takes. The driver is the Python one writing real guest RAM; the backends are real
sockets and a real TAP in a network namespace."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

import xinterface as xi
from tests.conftest import needs_kvm, wait_for
from tests.netns import inside, ip, needs_netns, netns, tap
from tests.virtio.test_net import (
    HDR,
    MEMORY,
    RX_RING,
    SIZE,
    TX_BUF,
    TX_RING,
    Rig,
    frame,
    rig,
)
from xinterface.virtio import VIRTIO_F_INDIRECT_DESC, Interrupt, Status
from xinterface.virtio.chain import DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from xinterface.virtio.driver import QueueDriver, bring_up
from xinterface.virtio.net import CallbackBackend, SocketBackend, VirtioNet
from xinterface.virtio.net.tap import TapBackend

pytestmark = needs_kvm


def received(r: Rig, data: bytes) -> bool:
    """Post one receive buffer and wait for ``data`` to land in it."""
    (head, gpa), = r.post_rx([2048])
    r.net.notify(0)
    used = r.wait_rx(1, timeout=5)
    return used == [(head, HDR + len(data))] and r.intf.copy_from(gpa + HDR, len(data)) == data


def test_an_empty_datagram_from_the_peer_is_a_runt_not_a_close() -> None:
    with rig() as r:
        r.peer.send(b"")
        r.peer.send(frame(60, 1))
        assert received(r, frame(60, 1))
        assert r.net.link_up
        assert r.net.stats["rx_runt"] == 1 and r.net.stats["rx_backend"] == 0
        assert Interrupt.CONFIG not in r.interrupts


def test_an_empty_injected_frame_is_a_runt_not_a_close() -> None:
    holder: dict[str, CallbackBackend] = {}

    def make() -> tuple[object, socket.socket]:
        b = holder["b"] = CallbackBackend(lambda data: None)
        return b, socket.socket()

    with rig(backend=make) as r:
        holder["b"].inject(b"")
        holder["b"].inject(frame(64, 2))
        assert received(r, frame(64, 2))
        assert r.net.link_up and r.net.stats["rx_runt"] == 1


class Flaky:
    """A callback that raises ``errno_`` while ``failing`` is set, then takes frames."""

    def __init__(self, errno_: int) -> None:
        self.errno = errno_
        self.failing = True
        self.frames: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        if self.failing:
            raise OSError(self.errno, "backend gone for now")
        self.frames.append(data)


def flaky_rig(errno_: int) -> tuple[Flaky, dict[str, CallbackBackend],
                                    Callable[[], tuple[object, socket.socket]]]:
    flaky = Flaky(errno_)
    holder: dict[str, CallbackBackend] = {}

    def make() -> tuple[object, socket.socket]:
        b = holder["b"] = CallbackBackend(flaky)
        return b, socket.socket()

    return flaky, holder, make


def test_a_gone_backend_takes_the_link_down_and_a_working_send_brings_it_back() -> None:
    flaky, holder, make = flaky_rig(errno.EPIPE)
    with rig(backend=make) as r:
        r.send(frame(60))
        assert not r.net.link_up and r.net.stats["tx_backend"] == 1
        assert Interrupt.CONFIG in r.interrupts
        r.interrupts.clear()
        flaky.failing = False
        r.send(frame(61, 3))
        assert flaky.frames == [frame(61, 3)]
        assert r.net.link_up and r.net.read_config(6, 2) == b"\x01\x00"
        assert Interrupt.CONFIG in r.interrupts          # the driver is told it is back
        holder["b"].inject(frame(62, 4))
        assert received(r, frame(62, 4))                   # and receiving resumed
        assert (r.net.stats["link_down"], r.net.stats["link_up"]) == (1, 1)


def test_a_device_reset_brings_the_link_back() -> None:
    _, holder, make = flaky_rig(errno.ECONNRESET)
    with rig(backend=make) as r:
        r.send(frame(60))
        assert not r.net.link_up
        r.net.set_status(0)                                 # the guest resets the device
        assert r.net.link_up
        rx, tx = QueueDriver(r.intf, RX_RING, SIZE), QueueDriver(r.intf, TX_RING, SIZE)
        assert bring_up(r.net, r.intf, [rx, tx]) & Status.DRIVER_OK
        r.rx, r.tx = rx, tx
        holder["b"].inject(frame(63, 5))
        assert received(r, frame(63, 5))


def test_a_transient_send_error_drops_the_frame_and_keeps_the_link() -> None:
    _, holder, make = flaky_rig(errno.EIO)
    with rig(backend=make) as r:
        r.send(frame(60))
        assert r.net.stats["tx_backend"] == 1 and len(r.tx.used()) == 1
        assert r.net.link_up and Interrupt.CONFIG not in r.interrupts
        holder["b"].inject(frame(64, 6))
        assert received(r, frame(64, 6))


def test_a_frame_in_more_buffers_than_iov_max_is_sent_whole() -> None:
    """A queue of 1,024 with INDIRECT: the header, two direct pieces and an indirect table of
    1,024 pieces of 8 bytes, one 8,208-byte frame in 1,026 buffers (1,027 with the header)."""
    size = 1024
    pieces = 2 + size
    assert pieces > os.sysconf("SC_IOV_MAX")   # more than sendmsg(2) takes
    data = frame(8 * pieces, 9)
    backend, peer = SocketBackend.pair()
    with xi.Machine(memory=MEMORY) as m, peer:
        intf = xi.bind(m)
        net = VirtioNet(backend, queue_size=size)
        rx, tx = QueueDriver(intf, 0x200000, size), QueueDriver(intf, 0x210000, size)
        assert bring_up(net, intf, [rx, tx]) & Status.DRIVER_OK
        assert net.negotiated(VIRTIO_F_INDIRECT_DESC)
        table = 0x300000
        intf.copy_to(TX_BUF, bytes(HDR))
        intf.copy_to(TX_BUF + 0x1000, data)
        n = VIRTQ_DESC_F_NEXT
        tx.write_desc(0, TX_BUF, HDR, n, 1)
        tx.write_desc(1, TX_BUF + 0x1000, 8, n, 2)
        tx.write_desc(2, TX_BUF + 0x1008, 8, n, 3)
        tx.write_desc(3, table, 16 * size, VIRTQ_DESC_F_INDIRECT)
        intf.copy_to(table, b"".join(
            DESC.pack(TX_BUF + 0x1010 + 8 * k, 8, n if k + 1 < size else 0, k + 1)
            for k in range(size)))
        tx.make_available(0)
        net.notify(1)
        assert tx.used() == [(0, 0)]
        peer.settimeout(5)
        assert peer.recv(65536) == data
        assert net.stats["tx_coalesced"] == 1 and net.stats["tx_packets"] == 1
        assert net.link_up and net.stats["tx_backend"] == 0
        net.close()


@needs_netns
def test_a_tap_taken_down_while_transmitting_receives_again_once_up() -> None:
    with netns() as ns:
        tap(ns, "xitapl0", "10.0.2.2/24")
        with inside(ns):
            backend = TapBackend("xitapl0")

        def make() -> tuple[object, socket.socket]:
            return backend, socket.socket()

        with rig(backend=make) as r:
            ip("-n", ns, "link", "set", "xitapl0", "down")
            r.send(frame(60))                          # the TAP refuses it: EIO
            assert r.net.stats["tx_backend"] == 1
            assert r.net.link_up
            ip("-n", ns, "link", "set", "xitapl0", "up")
            (head, gpa), = r.post_rx([2048])
            r.net.notify(0)
            # The host's stack sends out of the TAP: an ARP request for an address behind it.
            with inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", ("10.0.2.15", 9))
            assert wait_for(lambda: bool(r.rx.used_idx), timeout=10)
            (got_head, length), = r.rx.used()
            assert got_head == head and length > HDR + 14
            assert struct.unpack(">H", r.intf.copy_from(gpa + HDR + 12, 2))[0] in (
                0x0806, 0x86DD, 0x0800)                # an Ethernet frame of the host's

