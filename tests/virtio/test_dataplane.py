"""The compiled data path (``xinterface._dataplane``) against the Python one, the reference:
the same drivers, hostile or not, through both, and the same outcome each time (device
status and error, used ring, every byte of guest RAM, the disk image, the frames on the
wire). Each test picks the path itself (``accel.dataplane`` set or None), so the
comparison runs under ``XINTERFACE_PURE_PYTHON=1`` too, whenever the extension is built."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, MEMORY, Rig, rig
from tests.virtio.test_queue import HOSTILE, OUTSIDE
from xinterface import accel
from xinterface.virtio import Status, VirtioDevice
from xinterface.virtio.blk import (
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VirtioBlk,
)
from xinterface.virtio.chain import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from xinterface.virtio.chain import VIRTQ_DESC_F_WRITE as W
from xinterface.virtio.console import VirtioConsole
from xinterface.virtio.net import SocketBackend, VirtioNet
from xinterface.virtio.rng import VirtioRng

pytestmark = needs_kvm
dataplane: ModuleType = pytest.importorskip("xinterface._dataplane")
PATHS = ("python", "compiled")
N = VIRTQ_DESC_F_NEXT
SECTORS = 64


class Counting:
    """``accel.dataplane`` that counts what each compiled call served (its second result),
    so a test knows the compiled path did the work, not the Python fallback."""

    def __init__(self) -> None:
        self.served = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(dataplane, name)
        if not callable(target) or name == "fence":
            return target

        def call(*args: Any) -> Any:
            result = target(*args)
            self.calls += 1
            self.served += result[1]
            return result
        return call


@contextmanager
def path(monkeypatch: pytest.MonkeyPatch, which: str) -> Iterator[Counting | None]:
    """The data path ``which`` for the devices brought up inside (a queue decides when it
    is mapped, a device at each doorbell)."""
    counting = Counting() if which == "compiled" else None
    with monkeypatch.context() as m:
        m.setattr(accel, "dataplane", counting)
        yield counting


def image(tmp_path: Path, name: str) -> Path:
    disk = tmp_path / name
    disk.write_bytes(bytes((i * 13) & 0xFF for i in range(SECTORS * 512)))
    return disk


@dataclass(frozen=True)
class Outcome:
    status: int
    error: str | None
    interrupts: tuple[int, ...]
    used: tuple[tuple[int, int], ...]
    memory: bytes
    disk: bytes


def outcome(r: Rig, disk: Path | None = None) -> Outcome:
    return Outcome(r.device.status, r.device.error, tuple(int(i) for i in r.interrupts),
                   tuple(r.queue.used()), r.snapshot(),
                   disk.read_bytes() if disk is not None else b"")


Device = Callable[[Path], VirtioDevice]
DEVICES: dict[str, Device] = {
    "rng": lambda tmp: VirtioRng(queue_size=8, max_request=64),
    "blk": lambda tmp: VirtioBlk(image(tmp, "disk.img"), queue_size=8),
}


def _both(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: Device,
          drive: Callable[[Rig], None], *, size: int = 8
          ) -> tuple[Outcome, Outcome, Counting]:
    """``drive`` on a fresh machine and device per path: the two outcomes, and what the
    compiled path served."""
    got: dict[str, Outcome] = {}
    counting = Counting()
    for which in PATHS:
        where = tmp_path / which
        where.mkdir()
        with path(monkeypatch, which) as c:
            device = make(where)
            with rig(device, size=size) as r:
                drive(r)
                disk = where / "disk.img"
                got[which] = outcome(r, disk if disk.exists() else None)
            if isinstance(device, VirtioBlk):
                device.close()
            if c is not None:
                counting = c
    return got["python"], got["compiled"], counting


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_chain_has_the_same_outcome_on_both_paths(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, device: str, case: str) -> None:
    build, message = HOSTILE[case]

    def drive(r: Rig) -> None:
        build(r)
        r.device.notify(0)

    python, compiled, _ = _both(monkeypatch, tmp_path, DEVICES[device], drive)
    assert compiled.status & Status.DEVICE_NEEDS_RESET
    assert compiled.error is not None and message in compiled.error
    assert compiled == python


def _rng_requests(r: Rig) -> None:
    for k in range(5):
        r.queue.post([(BUF + 0x100 * k, 8 + 16 * k, True)])
    r.device.notify(0)


def test_rng_is_served_by_the_compiled_path_and_fills_the_same_bytes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    python, compiled, counting = _both(monkeypatch, tmp_path, DEVICES["rng"], _rng_requests)
    assert counting.served == 5
    # Random bytes differ, their places do not: what each request got back, and where.
    assert compiled.used == python.used == tuple((k, min(8 + 16 * k, 64)) for k in range(5))
    assert compiled.status == python.status and compiled.error is None


def _blk_request(r: Rig, kind: int, sector: int, data: int, *, data_gpa: int = BUF + 0x1000,
                 header_gpa: int = BUF, status_gpa: int = BUF + 0x800) -> None:
    r.intf.copy_to(header_gpa, struct.pack("<IIQ", kind, 0, sector))
    r.intf.copy_to(data_gpa, bytes((i * 5 + 1) & 0xFF for i in range(data)))
    chain = [(header_gpa, 16, False), (status_gpa, 1, True)]
    if data:
        chain.insert(1, (data_gpa, data, kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID)))
    r.queue.post(chain)


@pytest.mark.parametrize(("name", "requests", "served"), [
    ("read", [(VIRTIO_BLK_T_IN, 3, 1024)], 1),
    ("write", [(VIRTIO_BLK_T_OUT, 5, 512)], 1),
    ("read the last sector", [(VIRTIO_BLK_T_IN, SECTORS - 1, 512)], 1),
    ("beyond the capacity", [(VIRTIO_BLK_T_IN, SECTORS - 1, 1024)], 0),
    ("sector far past the end", [(VIRTIO_BLK_T_IN, 1 << 60, 512)], 0),
    ("not whole sectors", [(VIRTIO_BLK_T_OUT, 0, 100)], 0),
    ("get id", [(VIRTIO_BLK_T_GET_ID, 0, 20)], 0),
    ("flush", [(VIRTIO_BLK_T_FLUSH, 0, 0)], 1),
    ("unknown type", [(99, 0, 0)], 0),
    ("mixed batch", [(VIRTIO_BLK_T_OUT, 1, 512), (99, 0, 0), (VIRTIO_BLK_T_IN, 1, 512)], 2),
])
def test_blk_requests_have_the_same_outcome_on_both_paths(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
        requests: list[tuple[int, int, int]], served: int) -> None:
    def drive(r: Rig) -> None:
        for k, (kind, sector, data) in enumerate(requests):
            _blk_request(r, kind, sector, data, header_gpa=BUF + 0x40 * k,
                         status_gpa=BUF + 0x800 + k, data_gpa=BUF + 0x1000 * (k + 1))
        r.device.notify(0)

    python, compiled, counting = _both(monkeypatch, tmp_path, DEVICES["blk"], drive)
    assert compiled == python
    assert counting.served == served   # the rest went to the Python path, in order
    assert len(compiled.used) == len(requests) and compiled.error is None


def test_a_blk_buffer_across_two_regions_is_served_by_the_python_path_alike(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Two adjacent regions meeting at 1 MiB: the data buffer crosses them. The compiled path
    # maps one region per buffer, so this chain goes to Python; the next one it serves.
    memory = [(0, 1 << 20), (1 << 20, 1 << 20)]
    got: dict[str, tuple[Outcome, int]] = {}
    for which in PATHS:
        with path(monkeypatch, which) as c:
            device = VirtioBlk(image(tmp_path, f"{which}.img"), queue_size=8)
            with rig(device, memory=memory) as r:
                _blk_request(r, VIRTIO_BLK_T_IN, 0, 1024, data_gpa=(1 << 20) - 512)
                _blk_request(r, VIRTIO_BLK_T_IN, 2, 512, header_gpa=BUF + 0x40,
                             status_gpa=BUF + 0x801)
                r.device.notify(0)
                got[which] = (outcome(r), c.served if c is not None else 0)
            device.close()
    assert got["compiled"][0] == got["python"][0]
    assert got["compiled"][1] == 1
    assert got["python"][0].memory[(1 << 20) - 512:(1 << 20) + 512] == image(
        tmp_path, "check.img").read_bytes()[:1024]


def test_the_used_index_is_never_seen_torn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver polling used.idx while the compiled path publishes it across 0x00ff ->
    0x0100 (and 0xffff -> 0) sees only values it has made available: one 2-byte store."""
    with path(monkeypatch, "compiled") as counting, rig(VirtioRng(queue_size=8)) as r:
        assert counting is not None
        vq = r.device.queues[0]
        view = r.intf.vmap(r.queue.used_addr, 4)
        used16 = view.cast("H")
        seen: set[int] = set()
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                seen.add(used16[1])

        for start in (0x00F8, 0xFFF8):
            vq.next_avail = vq.next_used = start
            r.queue.avail_idx = r.queue.last_used = start
            r.intf.copy_to(r.queue.avail_addr + 2, struct.pack("<H", start))
            r.intf.copy_to(r.queue.used_addr + 2, struct.pack("<H", start))
            seen.clear()
            poller = threading.Thread(target=poll)
            poller.start()
            try:
                for _ in range(4):
                    for k in range(4):
                        r.queue.post([(BUF + 0x100 * k, 16, True)])
                    r.device.notify(0)
            finally:
                stop.set()
                poller.join()
                stop.clear()
            allowed = {(start + k) & 0xFFFF for k in range(17)}
            assert seen <= allowed, sorted(seen - allowed)
            assert r.queue.used_idx == (start + 16) & 0xFFFF
        assert counting.served == 32
        view.put()


# --- random chains ------------------------------------------------------------------------
ADDRS = st.sampled_from([BUF, BUF + 0x333, MEMORY - 8, MEMORY - 0x1000, OUTSIDE, 0x1_0000_0000,
                         (1 << 64) - 8])
DESCRIPTOR = st.tuples(ADDRS, st.sampled_from([0, 1, 7, 16, 32, 0x1000, 0xFFFF_FFFF]),
                       st.integers(0, 7), st.integers(0, 9))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=st.lists(DESCRIPTOR, min_size=1, max_size=8), heads=st.lists(
    st.integers(0, 9), min_size=1, max_size=4), indirect=st.binary(max_size=48))
def test_random_chains_have_the_same_outcome_on_both_paths(
        monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        table: list[tuple[int, int, int, int]], heads: list[int], indirect: bytes) -> None:
    """Descriptors of any flags (INDIRECT included), lengths and addresses (in RAM, across
    its end, outside it, wrapping 2^64), heads in and out of the table, an indirect table's
    bytes at BUF + 0x800: the rng device ends in the same state on both paths."""
    tmp = tmp_path_factory.mktemp("chains")

    def drive(r: Rig) -> None:
        r.intf.copy_to(BUF + 0x800, indirect)
        for i, (addr, length, flags, nxt) in enumerate(table):
            if flags & VIRTQ_DESC_F_INDIRECT:
                addr = BUF + 0x800
            r.queue.write_desc(i, addr, length, flags, nxt)
        for head in heads:
            r.queue.make_available(head)
        r.device.notify(0)

    python, compiled, _ = _both(monkeypatch, tmp, DEVICES["rng"], drive)
    # The random bytes differ; every other byte of RAM, and all the rest, is the same.
    assert (compiled.status, compiled.error, compiled.interrupts, compiled.used) == (
        python.status, python.error, python.interrupts, python.used)
    if not compiled.used:
        assert compiled.memory == python.memory


# --- virtio-net and virtio-console ------------------------------------------------------
NET_RX, NET_TX = 0x10000, 0x18000


def _frame(n: int) -> bytes:
    return b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x88\xb5" + bytes(
        (i * 7) & 0xFF for i in range(n - 14))


def _net_run(monkeypatch: pytest.MonkeyPatch, which: str,
             drive: Callable[[Any, Any, Any, socket.socket, VirtioNet], None]
             ) -> tuple[dict[str, int], bytes, list[tuple[int, int]], list[tuple[int, int]],
                        list[bytes], int]:
    import xinterface as xi
    from xinterface.virtio.driver import QueueDriver, bring_up
    from xinterface.virtio.net.device import VIRTIO_NET_F_MRG_RXBUF
    with path(monkeypatch, which) as c:
        backend, peer = SocketBackend.pair()
        peer.settimeout(0.2)
        with xi.Machine(memory=4 << 20) as m:
            intf = xi.bind(m)
            net = VirtioNet(backend)
            rx, tx = QueueDriver(intf, NET_RX, 16), QueueDriver(intf, NET_TX, 16)
            features = 1 << 32 | 1 << 5 | 1 << 16 | 1 << VIRTIO_NET_F_MRG_RXBUF
            assert bring_up(net, intf, [rx, tx], features=features) & Status.DRIVER_OK
            try:
                drive(intf, rx, tx, peer, net)
                wire: list[bytes] = []
                while True:
                    try:
                        wire.append(peer.recv(70000))
                    except (TimeoutError, BlockingIOError):
                        break
                return (dict(net.stats), intf.copy_from(0, 4 << 20), tx.used(), rx.used(),
                        wire, c.served if c is not None else 0)
            finally:
                net.close()
                peer.close()


def _tx_frames(intf: Any, rx: Any, tx: Any, peer: socket.socket, net: VirtioNet) -> None:
    sizes = [60, 1514, 10, 70000, 60]      # a runt and an oversize one among them
    for k, n in enumerate(sizes):
        gpa = 0x100000 + 0x20000 * k
        intf.copy_to(gpa, bytes(12) + _frame(max(n, 14))[:n])
        if k == 1:   # the header in a buffer of its own
            tx.post([(gpa, 12, False), (gpa + 12, n, False)])
        else:
            tx.post([(gpa, 12 + n, False)])
    net.notify(1)


def test_net_transmit_has_the_same_outcome_on_both_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    python = _net_run(monkeypatch, "python", _tx_frames)
    compiled = _net_run(monkeypatch, "compiled", _tx_frames)
    assert compiled[:5] == python[:5]
    assert compiled[0]["tx_packets"] == 3 and compiled[0]["tx_runt"] == 1
    assert compiled[5] == 3   # the three good frames, sent from C


RX_FRAMES = (60, 1514, 8, 3000, 200)    # a runt; one in two mergeable buffers


def _rx_frames(intf: Any, rx: Any, tx: Any, peer: socket.socket, net: VirtioNet) -> None:
    for k in range(6):
        rx.post([(0x40000 + 0x1000 * k, 0x800, True)])
    for n in RX_FRAMES:
        peer.send(_frame(max(n, 14))[:n])
    net.notify(0)
    for _ in range(500):
        if rx.used_idx >= 5:
            break
        threading.Event().wait(0.01)


def test_net_receive_has_the_same_outcome_on_both_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    python = _net_run(monkeypatch, "python", _rx_frames)
    compiled = _net_run(monkeypatch, "compiled", _rx_frames)
    stats = {k: v for k, v in python[0].items() if k.startswith("rx_")}
    assert {k: v for k, v in compiled[0].items() if k.startswith("rx_")} == stats
    assert stats == {"rx_packets": 4, "rx_bytes": 60 + 1514 + 3000 + 200, "rx_runt": 1}
    assert compiled[1] == python[1]
    assert compiled[5] >= 1


def _console_run(monkeypatch: pytest.MonkeyPatch, which: str
                 ) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]], bytes, int]:
    import xinterface as xi
    from xinterface.virtio.driver import QueueDriver, bring_up
    read_end, write_end = os.pipe()
    with path(monkeypatch, which) as c, open(write_end, "wb", buffering=0) as out, \
            xi.Machine(memory=MEMORY) as m:
        intf = xi.bind(m)
        console = VirtioConsole(out, queue_size=8)
        rx, tx = QueueDriver(intf, NET_RX, 8), QueueDriver(intf, NET_TX, 8)
        assert bring_up(console, intf, [rx, tx]) & Status.DRIVER_OK
        try:
            intf.copy_to(BUF, b"hello, ")
            intf.copy_to(BUF + 0x100, b"world")
            tx.post([(BUF, 7, False)])
            tx.post([(BUF + 0x100, 5, False)])
            console.notify(1)
            rx.post([(BUF + 0x200, 4, True)])
            rx.post([(BUF + 0x300, 16, True)])
            console.feed(b"typed input")
            written = os.read(read_end, 100)
            served = c.served if c is not None else 0
            return (written, tx.used(), rx.used(), intf.copy_from(BUF + 0x200, 0x200), served)
        finally:
            console.disconnect()
            os.close(read_end)


def test_console_output_and_input_are_the_same_on_both_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    python = _console_run(monkeypatch, "python")
    compiled = _console_run(monkeypatch, "compiled")
    assert compiled[:4] == python[:4]
    assert python[:3] == (b"hello, world", [(0, 0), (1, 0)], [(0, 4), (1, 7)])
    assert compiled[4] == 4   # two chains out, two in, all from C


def test_python_devices_keep_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device written in Python (the helpers' Echo) never reaches the compiled path."""
    with path(monkeypatch, "compiled") as counting, rig() as r:
        assert counting is not None
        r.intf.copy_to(BUF, b"ping")
        r.queue.post([(BUF, 4, False), (BUF + 0x100, 4, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 4)] and r.intf.copy_from(BUF + 0x100, 4) == b"ping"
        assert counting.calls == 0


def test_a_ring_across_two_regions_keeps_the_python_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 512 descriptors from 0x10000 end at 0x12000: the regions meet at 0x11000, inside it.
    regions = [(0, 0x11000), (0x11000, MEMORY - 0x11000)]
    with path(monkeypatch, "compiled") as counting, rig(VirtioRng(queue_size=512), size=512,
                                                        memory=regions) as r:
        assert counting is not None
        assert r.device.queues[0].compiled_regions() is None
        r.queue.post([(BUF, 16, True)])
        r.device.notify(0)
        assert r.queue.used() == [(0, 16)] and counting.calls == 0


def test_descriptor_flags_outside_the_spec_are_ignored_alike(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def drive(r: Rig) -> None:
        r.queue.write_desc(0, BUF, 16, W | N | 0xFFF8, 1)
        r.queue.write_desc(1, BUF + 0x100, 16, W | 0x8000, 0)
        r.queue.make_available(0)
        r.device.notify(0)
    python, compiled, counting = _both(monkeypatch, tmp_path, DEVICES["rng"], drive)
    assert compiled.used == python.used == ((0, 32),) and counting.served == 1


def test_the_vhost_user_backend_serves_through_the_compiled_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A session's device reaches the frontend's memory table through the same regions."""
    from tests.vhost_user.frontend import Backend
    from xinterface.virtio.driver import QueueDriver
    with path(monkeypatch, "compiled") as counting:
        assert counting is not None
        rng = VirtioRng()
        with Backend(rng, tmp_path) as backend, backend.connect() as fe:
            fe.negotiate()
            assert fe.mem_table() == 0
            q = QueueDriver(fe.intf, 0x1000, 16)
            assert fe.start_ring(0, q) == 0
            fe.submit(0, q, [(0x10000, 64, True)])
            assert fe.wait_call(0)
            assert q.used() == [(0, 64)] and rng.bytes_served == 64
            assert fe.intf.copy_from(0x10000, 64) != bytes(64)
        assert counting.served == 1
