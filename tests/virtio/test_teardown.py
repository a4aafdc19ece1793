"""Closing a machine while its virtio devices' own threads are busy, and closing a device from
its own thread: every thread stops cleanly, none meets a released view or a closed irqfd,
nothing hangs. Real KVM machines; the driver is the Python one writing real guest RAM."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

import xinterface as xi
from tests.conftest import finish, needs_kvm, wait_for
from tests.virtio.helpers import BUF, MEMORY, RINGS, Echo
from tests.virtio.test_net import HDR, RX_BUF, RX_RING, SIZE, TX_BUF, TX_RING, frame
from xinterface.virtio import Interrupt, Status, VirtQueue
from xinterface.virtio.driver import QueueDriver, bring_up
from xinterface.virtio.net import CallbackBackend, SocketBackend, VirtioNet

pytestmark = needs_kvm
T = TypeVar("T")


@contextmanager
def thread_errors() -> Iterator[list[BaseException]]:
    """Exceptions that ended a thread (threading.excepthook) while the block ran."""
    seen: list[BaseException] = []
    old = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            seen.append(args.exc_value)

    threading.excepthook = hook
    try:
        yield seen
    finally:
        threading.excepthook = old



class SlowWire(SocketBackend):
    """A socket backend that takes its time handing over each frame (a busy host): the
    receive thread is inside it, holding the receive queue, whenever the test wants."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.reading = threading.Event()

    def recv_into(self, buffer: bytearray) -> int | None:
        self.reading.set()
        time.sleep(0.02)
        return super().recv_into(buffer)


def close_while_receiving() -> VirtioNet:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    backend = SlowWire(ours)
    with peer:
        m = xi.Machine(memory=MEMORY)
        intf = xi.bind(m)
        net = VirtioNet(backend)
        intf.on_release(net.close)                 # as the boards close their devices
        rx, tx = QueueDriver(intf, RX_RING, SIZE), QueueDriver(intf, TX_RING, SIZE)
        assert bring_up(net, intf, [rx, tx]) & Status.DRIVER_OK
        for k in range(SIZE):
            rx.post([(RX_BUF + 0x800 * k, 0x800, True)])
        for k in range(SIZE):
            peer.send(frame(1500, k))
        net.notify(0)
        assert wait_for(lambda: net.stats["rx_packets"] > 0)
        backend.reading.clear()
        assert backend.reading.wait(5)
        m.close()
    return net


def test_close_while_frames_keep_arriving_stops_the_receive_thread_cleanly() -> None:
    """The boards' wiring: the device closes on the interface's release; the machine closes
    while the receive thread is taking a frame for the buffers it holds. The thread
    delivers it and stops, its views valid to the end."""
    with thread_errors() as errors:
        for _ in range(3):
            net = close_while_receiving()
            assert net.status == 0 and net.stats["rx_packets"] > 1
    assert errors == []


class Slow(Echo):
    """An echo that holds its request's views for a while, so a close lands mid-request."""

    def __init__(self) -> None:
        super().__init__(queue_size=8, iothread=True)
        self.inside = threading.Event()

    def handle(self, queue: VirtQueue) -> None:
        for chain in queue:
            self.inside.set()
            time.sleep(0.05)
            queue.add_used(chain, chain.write(chain.read()))


def test_close_while_an_iothread_device_serves_a_request() -> None:
    """A busy iothread device interrupting through an irqfd: the machine closes while it
    holds a request's views. It finishes the request with its views and irqfd valid."""
    with thread_errors() as errors:
        m = xi.Machine(memory=MEMORY, irqchip=True)
        intf = xi.bind(m)
        irqfd = intf.irqfd(5)
        dev = Slow()
        intf.on_release(dev.disconnect)
        q = QueueDriver(intf, RINGS, 8)
        assert bring_up(dev, intf, [q], interrupt=lambda kind: irqfd.trigger()) & (
            Status.DRIVER_OK)
        intf.copy_to(BUF, b"ping")
        q.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
        dev.notify(0)
        assert dev.inside.wait(5)
        m.close()
        assert dev.stats["needs_reset"] == 0 and dev.error is None
    assert errors == []


def test_a_failing_device_thread_survives_an_interrupt_that_cannot_be_raised() -> None:
    """The worker's error path reports the failure to the driver; when the transport cannot
    raise that interrupt any more, the failure stands and the thread goes on."""

    class Broken(Echo):
        def handle(self, queue: VirtQueue) -> None:
            raise RuntimeError("a device bug")

    def gone(kind: Interrupt) -> None:
        raise xi.XInterfaceError(9, "the irqfd is released")   # EBADF

    with thread_errors() as errors, xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        dev = Broken(iothread=True)
        q = QueueDriver(intf, RINGS, 8)
        assert bring_up(dev, intf, [q], interrupt=gone) & Status.DRIVER_OK
        q.post([(BUF, 4, False)])
        dev.notify(0)
        assert wait_for(lambda: dev.status & Status.DEVICE_NEEDS_RESET != 0)
        time.sleep(0.1)
        assert "RuntimeError" in (dev.error or "")
        assert dev.stats["interrupt_failed"] == 1
        dev.disconnect()
    assert errors == []


def test_close_from_a_callback_on_the_devices_own_iothread_does_not_deadlock() -> None:
    """A CallbackBackend whose callback closes the device (as the boards close it on
    release), served on the device's own thread: the close completes, the device is reset
    and its backend closed, and the frame's chain is given back to nobody (a reset returns
    every buffer to the driver)."""
    holder: dict[str, VirtioNet] = {}
    closed = threading.Event()

    def on_frame(data: bytes) -> None:
        holder["net"].close()
        closed.set()

    backend = CallbackBackend(on_frame)
    with thread_errors() as errors, xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        net = holder["net"] = VirtioNet(backend, iothread=True)
        rx, tx = QueueDriver(intf, RX_RING, SIZE), QueueDriver(intf, TX_RING, SIZE)
        assert bring_up(net, intf, [rx, tx]) & Status.DRIVER_OK
        intf.copy_to(TX_BUF, bytes(HDR))
        intf.copy_to(TX_BUF + 0x1000, frame(60))
        tx.post([(TX_BUF, HDR, False), (TX_BUF + 0x1000, 60, False)])
        net.notify(1)
        finish(lambda: closed.wait(5) or pytest.fail("the callback's close() hung"), 10)
        assert net.status == 0 and not net.queues[1].mapped
        assert tx.used_idx == 0
        with pytest.raises(OSError):
            backend.sock.send(b"x")                    # closed
        ignored = net.stats["notify_ignored"]
        net.notify(1)                                  # a late doorbell: ignored
        assert net.stats["notify_ignored"] == ignored + 1 and tx.used_idx == 0
    assert errors == []
