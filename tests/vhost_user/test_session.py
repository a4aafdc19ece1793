"""The backend served to a frontend written to the spec (tests/vhost_user/frontend.py): the
devices run unchanged over the frontend's memory, rings stop and start again where they
were, and a frontend that goes leaves the device reset for the next one."""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import pytest

from tests.conftest import wait_for
from xinterface.vhost_user.memory import MemoryTable
from xinterface.vhost_user.protocol import (
    CONFIG_HEADER,
    U64,
    VRING_STATE,
    ProtocolFeature,
    Region,
    Request,
    encode_config,
)
from xinterface.vhost_user.session import PROTOCOL_FEATURES
from xinterface.virtio import VirtioBlk, VirtioRng
from xinterface.virtio.blk import REQ_HEADER, SECTOR, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT
from xinterface.virtio.console import VirtioConsole
from xinterface.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, Status
from xinterface.virtio.driver import QueueDriver

from .frontend import MEMORY, USER_BASE, Backend, Frontend

RING, DATA = 0x1000, 0x10000


def test_rng_fills_a_buffer_in_the_frontends_memory(tmp_path: Path) -> None:
    rng = VirtioRng()
    with Backend(rng, tmp_path) as backend, backend.connect() as fe:
        fe.negotiate()
        assert fe.mem_table() == 0
        q = QueueDriver(fe.intf, RING, 16)
        assert fe.start_ring(0, q) == 0
        fe.submit(0, q, [(DATA, 64, True)])
        assert fe.wait_call(0)
        assert q.used() == [(0, 64)]
        assert fe.intf.copy_from(DATA, 64) != bytes(64)
        assert rng.bytes_served == 64
        assert backend.lines == []


def test_protocol_and_device_features_are_offered(tmp_path: Path) -> None:
    with Backend(VirtioRng(), tmp_path) as backend, backend.connect() as fe:
        offered = U64.unpack(fe.call(Request.GET_FEATURES))[0]
        assert offered >> VIRTIO_F_EVENT_IDX & 1 and offered >> VIRTIO_F_INDIRECT_DESC & 1
        assert U64.unpack(fe.call(Request.GET_PROTOCOL_FEATURES))[0] == PROTOCOL_FEATURES
        assert PROTOCOL_FEATURES >> ProtocolFeature.CONFIG & 1
        assert U64.unpack(fe.call(Request.GET_QUEUE_NUM))[0] == 1


def _blk_request(fe: Frontend, q: QueueDriver, kind: int, sector: int,
                 data: bytes | None = None) -> tuple[int, bytes]:
    """One request through the ring: its status byte and the data read."""
    fe.intf.copy_to(DATA, REQ_HEADER.pack(kind, 0, sector))
    if data is not None:
        fe.intf.copy_to(DATA + 0x100, data)
    buffers = [(DATA, REQ_HEADER.size, False),
               (DATA + 0x100, SECTOR, kind == VIRTIO_BLK_T_IN),
               (DATA + 0x400, 1, True)]
    fe.intf.copy_to(DATA + 0x400, b"\xff")
    fe.submit(0, q, buffers)
    assert fe.wait_call(0)
    assert len(q.used()) == 1
    return fe.intf.copy_from(DATA + 0x400, 1)[0], fe.intf.copy_from(DATA + 0x100, SECTOR)


@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_blk_reads_and_writes_the_image(tmp_path: Path, readonly: bool) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 2 + bytes(7 * SECTOR))
    with VirtioBlk(image, readonly=readonly) as blk, Backend(blk, tmp_path) as backend, \
            backend.connect() as fe:
        fe.negotiate()
        config = fe.call(Request.GET_CONFIG, encode_config(0, bytes(8)))
        assert config[:CONFIG_HEADER.size] == CONFIG_HEADER.pack(0, 8, 0)
        assert struct.unpack("<Q", config[CONFIG_HEADER.size:])[0] == 8   # capacity
        assert fe.mem_table() == 0
        q = QueueDriver(fe.intf, RING, 16)
        assert fe.start_ring(0, q) == 0
        status, data = _blk_request(fe, q, VIRTIO_BLK_T_IN, 0)
        assert status == 0 and data == bytes(range(256)) * 2
        status, _ = _blk_request(fe, q, VIRTIO_BLK_T_OUT, 3, b"\xab" * SECTOR)
        assert status == (1 if readonly else 0)
    written = image.read_bytes()[3 * SECTOR:4 * SECTOR]
    assert written == (bytes(SECTOR) if readonly else b"\xab" * SECTOR)


def test_get_vring_base_stops_the_ring_and_it_restarts_from_there(tmp_path: Path) -> None:
    rng = VirtioRng()
    with Backend(rng, tmp_path) as backend, backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        q = QueueDriver(fe.intf, RING, 16)
        fe.start_ring(0, q)
        for _ in range(3):
            fe.submit(0, q, [(DATA, 8, True)])
            assert fe.wait_call(0)
        assert len(q.used()) == 3
        reply = fe.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
        assert VRING_STATE.unpack(reply) == (0, 3)
        assert rng.status == 0   # every ring stopped: the device was reset
        # A kick to the stopped ring is not served.
        fe.submit(0, q, [(DATA, 8, True)])
        assert not fe.wait_call(0, timeout=0.3)
        # Started again from index 3: the chain waiting is served.
        assert fe.start_ring(0, q, base=3) == 0
        fe.kick(0)
        assert fe.wait_call(0)
        assert q.used() == [(3, 8)]
        assert rng.status & Status.DRIVER_OK


def test_a_new_memory_table_while_running_remaps_the_rings(tmp_path: Path) -> None:
    """SET_MEM_TABLE after DRIVER_OK (QEMU sends one when the guest's memory map changes):
    the running ring is mapped again through the new table, its indices kept, and a buffer
    in memory only the new table has is served."""
    with Backend(VirtioRng(), tmp_path) as backend, backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        q = QueueDriver(fe.intf, RING, 16)
        fe.start_ring(0, q)
        fe.submit(0, q, [(DATA, 8, True)])
        assert fe.wait_call(0)
        assert fe.mem_table() == 0   # the same memory again, new fds: mapped anew
        fe.submit(0, q, [(DATA + 8, 8, True)])
        assert fe.wait_call(0)
        # Memory added above the first region (a second memfd): the new table has both.
        more = os.memfd_create("more", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(more, MEMORY)
            regions = [Region(0, MEMORY, USER_BASE, 0),
                       Region(MEMORY, MEMORY, USER_BASE + (4 << 20), 0)]
            assert fe.host.memory is not None
            fe.host.memory.close()
            fe.host.memory = MemoryTable(regions, [os.dup(fe.memfd), os.dup(more)])
            assert fe.mem_table(regions, [fe.memfd, more]) == 0
            fe.submit(0, q, [(MEMORY + 0x100, 32, True)])
            assert fe.wait_call(0)
            assert os.pread(more, 32, 0x100) != bytes(32)   # written through the new table
        finally:
            os.close(more)
        assert [n for _, n in q.used()] == [8, 8, 32]
        assert backend.lines == []


def test_console_output_reaches_the_device(tmp_path: Path) -> None:
    class Sink:
        data = b""

        def write(self, data: bytes) -> int:
            Sink.data += data
            return len(data)

        def flush(self) -> None:
            pass

    with Backend(VirtioConsole(Sink()), tmp_path) as backend, backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        rx, tx = QueueDriver(fe.intf, RING, 16), QueueDriver(fe.intf, RING + 0x1000, 16)
        assert fe.start_ring(0, rx) == 0 and fe.start_ring(1, tx) == 0
        fe.intf.copy_to(DATA, b"hello from the guest")
        fe.submit(1, tx, [(DATA, 20, False)])
        assert fe.wait_call(1)
        assert Sink.data == b"hello from the guest"


def _settled(backend: Backend, device: VirtioRng, sessions: int) -> bool:
    return backend.server.sessions == sessions and device.status == 0


def test_a_frontend_that_goes_leaves_the_device_reset_for_the_next(tmp_path: Path) -> None:
    rng = VirtioRng()
    fds = len(os.listdir("/proc/self/fd"))
    with Backend(rng, tmp_path) as backend:
        for round in range(3):
            with backend.connect() as fe:
                fe.negotiate()
                fe.mem_table()
                q = QueueDriver(fe.intf, RING, 16)
                assert fe.start_ring(0, q) == 0
                # Left in flight: the frontend goes without waiting for it.
                fe.submit(0, q, [(DATA, 16, True)])
            assert wait_for(functools.partial(_settled, backend, rng, round + 1))
        assert backend.lines == []
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) == fds)
