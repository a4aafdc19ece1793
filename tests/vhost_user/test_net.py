"""virtio-net on a TAP, served over vhost-user: frames the frontend's driver transmits come
out of the TAP into a network namespace, frames sent into the TAP arrive in its receive
ring, with the 12-byte virtio_net_hdr of a modern driver."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.netns import inside, needs_netns, netns, tap
from xinterface.vhost_user.protocol import U64, VRING_STATE, Request
from xinterface.virtio.driver import QueueDriver
from xinterface.virtio.net import TapBackend, VirtioNet
from xinterface.virtio.net.device import LEGACY_NET_HDR_SIZE, NET_HDR, VIRTIO_NET_F_MRG_RXBUF

from .frontend import Backend, Frontend

HDR = NET_HDR.size
LEGACY_HDR = LEGACY_NET_HDR_SIZE
ETHERTYPE = 0x88B5            # IEEE local experimental: nothing in the namespace answers it
MAC = bytes.fromhex("525400123456")
RX, TX, RX_BUF, TX_BUF = 0x1000, 0x3000, 0x10000, 0x20000


def frame(dst: bytes, src: bytes, n: int) -> bytes:
    return dst + src + ETHERTYPE.to_bytes(2, "big") + bytes((i * 3 + n) & 0xFF for i in range(100))


def rings(fe: Frontend) -> tuple[QueueDriver, QueueDriver]:
    """The memory table sent, then the receive and the transmit ring started."""
    assert fe.mem_table() == 0
    rx, tx = QueueDriver(fe.intf, RX, 16), QueueDriver(fe.intf, TX, 16)
    assert fe.start_ring(0, rx) == 0 and fe.start_ring(1, tx) == 0
    return rx, tx


def transmit(fe: Frontend, tx: QueueDriver, hdr: int, n: int) -> bytes:
    """Frame ``n`` behind a zero header of ``hdr`` bytes on the transmit ring, its used
    buffer notification awaited: the frame."""
    out = frame(b"\xff" * 6, MAC, n)
    fe.intf.copy_to(TX_BUF, bytes(hdr) + out)
    fe.submit(1, tx, [(TX_BUF, hdr + len(out), False)])
    assert fe.wait_call(1)
    return out


def check_received(fe: Frontend, rx: QueueDriver, hdr: int, into: bytes) -> None:
    """``into`` is the one used receive buffer's content, after a header of ``hdr`` bytes."""
    [(_, length)] = rx.used()
    assert length == hdr + len(into)
    assert fe.intf.copy_from(RX_BUF + hdr, len(into)) == into


@needs_netns
def test_frames_cross_the_tap_both_ways(tmp_path: Path) -> None:
    with netns() as ns:
        tap(ns, "xivhost0", "10.0.2.2/24")
        with inside(ns):
            net = VirtioNet(TapBackend("xivhost0"))
            peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
            peer.bind(("xivhost0", 0))
        peer.settimeout(10)
        try:
            with Backend(net, tmp_path) as backend, backend.connect() as fe:
                fe.negotiate()
                rx, tx = rings(fe)
                # Transmit: the header is the driver's, the frame goes out whole.
                out = transmit(fe, tx, HDR, 1)
                assert peer.recv(2048) == out
                # Receive: the namespace's frame lands in the buffer the driver gave.
                fe.submit(0, rx, [(RX_BUF, 2048, True)])
                into = frame(MAC, b"\x02" * 6, 2)
                peer.send(into)
                assert fe.wait_call(0)
                check_received(fe, rx, HDR, into)
                assert NET_HDR.unpack(fe.intf.copy_from(RX_BUF, HDR))[6] == 1   # num_buffers
                assert backend.lines == []
        finally:
            peer.close()
            net.close()
    assert net.stats["tx_packets"] == 1 and net.stats["rx_packets"] == 1


@needs_netns
def test_a_disabled_ring_discards_transmits_and_receives_nothing(tmp_path: Path) -> None:
    """Spec, "Ring states": a started but disabled ring; the backend must not supply new
    receive frames, and must process and discard transmitted ones."""
    with netns() as ns:
        tap(ns, "xivhost0", "10.0.2.2/24")
        with inside(ns):
            net = VirtioNet(TapBackend("xivhost0"))
            peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
            peer.bind(("xivhost0", 0))
        peer.settimeout(0.5)
        try:
            with Backend(net, tmp_path) as backend, backend.connect() as fe:
                fe.negotiate()
                rx, tx = rings(fe)
                for ring in (0, 1):
                    assert fe.ack(Request.SET_VRING_ENABLE, VRING_STATE.pack(ring, 0)) == 0
                # Transmit on the disabled ring: the chain comes back used, nothing leaves.
                transmit(fe, tx, HDR, 3)
                assert tx.used() == [(0, 0)]
                with pytest.raises(TimeoutError):
                    peer.recv(2048)
                # A frame for the guest while its receive ring is disabled stays out of it.
                fe.submit(0, rx, [(RX_BUF, 2048, True)])
                into = frame(MAC, b"\x02" * 6, 4)
                peer.send(into)
                assert not fe.wait_call(0, timeout=0.5)
                assert rx.used() == []
                # Enabled again: the waiting frame is received, the next transmit sent.
                for ring in (0, 1):
                    assert fe.ack(Request.SET_VRING_ENABLE, VRING_STATE.pack(ring, 1)) == 0
                assert fe.wait_call(0)
                check_received(fe, rx, HDR, into)
                out = transmit(fe, tx, HDR, 5)
                assert peer.recv(2048) == out
                assert backend.lines == []
        finally:
            peer.close()
            net.close()
    assert net.stats["tx_discarded_disabled"] == 1 and net.stats["tx_packets"] == 1


@needs_netns
def test_a_legacy_frontend_gets_the_10_byte_header(tmp_path: Path) -> None:
    """A frontend whose guest driver is legacy leaves VERSION_1 out (QEMU passes the
    driver's features as they are); without MRG_RXBUF its virtio_net_hdr has no
    num_buffers, 10 bytes (§5.1.6.1), both ways. The next frontend is offered VERSION_1."""
    with netns() as ns:
        tap(ns, "xivhost0", "10.0.2.2/24")
        with inside(ns):
            net = VirtioNet(TapBackend("xivhost0"))
            peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
            peer.bind(("xivhost0", 0))
        peer.settimeout(10)
        try:
            with Backend(net, tmp_path) as backend:
                with backend.connect() as fe:
                    offered = U64.unpack(fe.call(Request.GET_FEATURES))[0]
                    legacy = offered & 0xFFFFFFFF & ~(1 << VIRTIO_NET_F_MRG_RXBUF)
                    fe.negotiate(legacy)
                    rx, tx = rings(fe)
                    out = transmit(fe, tx, LEGACY_HDR, 6)
                    assert peer.recv(2048) == out
                    fe.submit(0, rx, [(RX_BUF, 2048, True)])
                    into = frame(MAC, b"\x02" * 6, 7)
                    peer.send(into)
                    assert fe.wait_call(0)
                    check_received(fe, rx, LEGACY_HDR, into)
                    assert net.legacy
                assert wait_for(lambda: net.status == 0)
                with backend.connect() as fe:
                    assert U64.unpack(fe.call(Request.GET_FEATURES))[0] == offered
                assert backend.lines == []
        finally:
            peer.close()
            net.close()
