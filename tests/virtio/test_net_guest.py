"""virtio-net end to end with a real guest: xinterface/bench/guests/virtio_net.S, assembled at
test time, finds our virtio-net among the virtio-mmio slots, sets it up, and sends or
receives numbered frames through it; the other end of the wire is a socket of the test's
(the unprivileged backend), or a TAP in a network namespace the test made."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import BinaryIO, cast

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.netns import inside, ip, needs_netns, netns, tap
from xinterface.bench import net
from xinterface.bench.marks import Marks
from xinterface.bench.wire import frame
from xinterface.virtio.mmio import VirtioMmio
from xinterface.virtio.net import SocketBackend, TapBackend, VirtioNet
from xinterface.virtio.net.backend import NetBackend

pytestmark = needs_kvm
# Frames per run: enough for used.idx to cross a 0x..ff -> 0x..00 step (where a store made
# byte by byte shows the driver a smaller index) nineteen times; the guest stops with '!' if
# used.idx ever claims more than it made available.
COUNT = 5000
TAP_COUNT = 600              # the injector paces its frames at 1 ms
SLOT = 3                     # the guest scans the slots: not the first one


def sent(seq: int) -> bytes:
    """Frame ``seq`` as the guest sends it: broadcast, from its MAC, EtherType 0x88b5."""
    head = b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x88\xb5" + seq.to_bytes(4, "little")
    return head.ljust(net.FRAME, b"\0")


def run_guest(mode: str, backend: NetBackend, *, doorbells: xi.Delivery = xi.Delivery.SYNC,
              on_mark: object = None, count: int = COUNT
              ) -> tuple[xi.RunResult, VirtioNet, Marks]:
    marks = Marks(on_mark if callable(on_mark) else lambda mark: None)
    device = VirtioNet(backend, mac=net.GUEST_MAC)
    with xi.Machine(memory=net.MEMORY, console=cast(BinaryIO, marks)) as m:
        m.load_flat(net.net_image(mode, count), gpa=net.BOOT_GPA, mode="protected")
        vcpu = m.vm.vcpus[0]
        regs = vcpu.get_regs()
        regs.rip = net.ENTRY
        vcpu.set_regs(regs)
        transport = VirtioMmio(device, net.MMIO_BASE + 0x200 * SLOT, doorbells=doorbells)
        transport.attach(xi.bind(m))
        result = m.run(timeout=60)
        transport.detach()
    return result, device, marks


@pytest.mark.parametrize("doorbells", [xi.Delivery.SYNC, xi.Delivery.EVENTFD],
                         ids=lambda d: d.value)
def test_guest_transmits_numbered_frames_in_order(doorbells: xi.Delivery) -> None:
    backend, peer = SocketBackend.pair()
    got: list[bytes] = []

    def read() -> None:
        while data := peer.recv(4096):
            got.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        result, device, marks = run_guest("tx", backend, doorbells=doorbells)
    finally:
        device.close()
        reader.join(10)
        peer.close()
    assert (result.reason, result.exit_code) == ("exit", 1), bytes(marks.text)
    assert bytes(marks.text) == b"RSE"
    assert got == [sent(i) for i in range(COUNT)]
    assert device.stats["tx_packets"] == COUNT and device.stats["tx_backend"] == 0


@pytest.mark.parametrize("doorbells", [xi.Delivery.SYNC, xi.Delivery.EVENTFD],
                         ids=lambda d: d.value)
def test_guest_receives_numbered_frames_in_order(doorbells: xi.Delivery) -> None:
    backend, peer = SocketBackend.pair()
    ready = threading.Event()

    def send() -> None:
        ready.wait(30)
        for i in range(COUNT):
            peer.send(frame(i, net.FRAME))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        result, device, marks = run_guest("rx", backend, doorbells=doorbells,
                                          on_mark=lambda mark: ready.set() if mark == "R" else None)
    finally:
        ready.set()
        sender.join(30)
        device.close()
        peer.close()
    # Exit status 1: every frame followed the one before it (the guest checks the numbers).
    assert (result.reason, result.exit_code) == ("exit", 1), bytes(marks.text)
    assert device.stats["rx_packets"] == COUNT and device.stats["rx_too_small"] == 0


@needs_netns
def test_guest_frames_through_a_tap_and_the_tap_going_away() -> None:
    with netns() as ns:
        tap(ns, "xitap0", "10.0.2.2/24")
        with inside(ns):
            backend = TapBackend("xitap0")
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
            capture.bind(("xitap0", 0))
        capture.settimeout(10)
        got: list[bytes] = []
        deleted = threading.Event()

        def on_mark(mark: str) -> None:
            if mark == "S":
                threading.Thread(target=pull_the_plug).start()

        def pull_the_plug() -> None:
            while len(got) < 50:
                got.append(capture.recv(4096))
            ip("-n", ns, "link", "del", "xitap0")    # under the guest's feet
            deleted.set()

        result, device, marks = run_guest("tx", backend, on_mark=on_mark, count=TAP_COUNT)
        device.close()
        capture.close()
    assert deleted.is_set()
    # The first frames crossed the TAP into the namespace's stack, numbered and whole.
    assert got == [sent(i) for i in range(50)]
    # Then the TAP went away: the rest were dropped and counted, the link went down (once: no
    # send worked again; the detach's reset brings it back up), and the guest ran to its end.
    assert (result.reason, result.exit_code) == ("exit", 1), bytes(marks.text)
    assert device.stats["tx_packets"] >= 50
    assert device.stats["tx_packets"] + device.stats["tx_backend"] == TAP_COUNT
    assert device.stats["tx_backend"] > 0 and device.stats["link_down"] == 1


@needs_netns
def test_guest_receives_through_a_tap() -> None:
    with netns() as ns:
        tap(ns, "xitap0", "10.0.2.2/24")
        with inside(ns):
            backend = TapBackend("xitap0")
        injector = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "xinterface.bench.wire", "send",
             "--iface", "xitap0", "--count", "0", "--pause", "0.001"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert injector.stdin is not None

        def on_mark(mark: str) -> None:
            if mark == "R":
                assert injector.stdin is not None
                injector.stdin.write(b"g")
                injector.stdin.flush()

        try:
            result, device, marks = run_guest("rx", backend, on_mark=on_mark, count=TAP_COUNT)
        finally:
            injector.terminate()
            injector.wait(30)
            device.close()
    assert result.reason == "exit" and bytes(marks.text) == b"RSE"
    assert device.stats["rx_packets"] >= TAP_COUNT
    # The TAP may drop frames when its queue is full (the guest counts the breaks); most
    # came through in order.
    assert (result.exit_code or 0) >> 1 < TAP_COUNT // 10
