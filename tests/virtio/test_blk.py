"""virtio-blk on a real image file, driven by a Python driver through real guest RAM: every
request type, read-only disks, bad requests, and a real EIO from the kernel."""

from __future__ import annotations

import errno
import os
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.virtio.helpers import BUF, Rig, rig
from xinterface.virtio import Status, VirtioBlk
from xinterface.virtio import blk as b
from xinterface.virtio.chain import DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from xinterface.virtio.chain import VIRTQ_DESC_F_WRITE as W
from xinterface.virtio.driver import QueueDriver, bring_up

pytestmark = needs_kvm
HDR, STATUS, DATA = BUF, BUF + 0x100, BUF + 0x1000
N, I = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_INDIRECT  # noqa: E741
SIZE = 64 << 10


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(i * 7 & 0xFF for i in range(SIZE)))
    return path


@pytest.fixture
def disk(image: Path) -> Iterator[Rig]:
    with VirtioBlk(image, serial="xinterface-disk") as dev, rig(dev) as r:
        yield r


def request(r: Rig, kind: int, sector: int = 0, *, out: bytes = b"", into: int = 0,
            header_writable: bool = False) -> tuple[int, int]:
    """One request (header, data, status byte); its (status, used len)."""
    r.intf.copy_to(HDR, struct.pack("<IIQ", kind, 0, sector))
    r.intf.copy_to(STATUS, b"\xee")
    chain = [(HDR, 16, header_writable)]
    if out:
        r.intf.copy_to(DATA, out)
        chain.append((DATA, len(out), False))
    if into:
        chain.append((DATA, into, True))
    chain.append((STATUS, 1, True))
    head = r.queue.post(chain)
    r.device.notify(0)
    used = r.queue.used()
    assert [u[0] for u in used] == [head]
    return r.intf.copy_from(STATUS, 1)[0], used[0][1]


def test_configuration_space(disk: Rig) -> None:
    capacity, _, seg_max = struct.unpack_from("<QII", disk.device.read_config(0, 16))
    assert (capacity, seg_max) == (SIZE // 512, 254)   # queue size 256, less 2
    assert struct.unpack("<I", disk.device.read_config(20, 4))[0] == 512   # blk_size
    offered = disk.device.device_features
    for bit in (b.VIRTIO_BLK_F_FLUSH, b.VIRTIO_BLK_F_BLK_SIZE, b.VIRTIO_BLK_F_SEG_MAX,
                b.VIRTIO_BLK_F_DISCARD, b.VIRTIO_BLK_F_WRITE_ZEROES):
        assert offered >> bit & 1
    assert not offered >> b.VIRTIO_BLK_F_RO & 1


def test_read(disk: Rig, image: Path) -> None:
    assert request(disk, b.VIRTIO_BLK_T_IN, 3, into=1024) == (b.VIRTIO_BLK_S_OK, 1025)
    assert disk.intf.copy_from(DATA, 1024) == image.read_bytes()[3 * 512:5 * 512]


def test_write_then_flush(disk: Rig, image: Path) -> None:
    data = os.urandom(1536)
    assert request(disk, b.VIRTIO_BLK_T_OUT, 10, out=data) == (b.VIRTIO_BLK_S_OK, 1)
    assert request(disk, b.VIRTIO_BLK_T_FLUSH) == (b.VIRTIO_BLK_S_OK, 1)
    assert image.read_bytes()[10 * 512:13 * 512] == data


def test_header_and_data_in_one_descriptor(disk: Rig, image: Path) -> None:
    # §2.6.4: framing does not depend on the descriptors (header + data in one buffer).
    data = b"\xab" * 512
    disk.intf.copy_to(HDR, struct.pack("<IIQ", b.VIRTIO_BLK_T_OUT, 0, 1) + data)
    disk.queue.post([(HDR, 16 + 512, False), (STATUS, 1, True)])
    disk.device.notify(0)
    assert disk.queue.used() == [(0, 1)]
    assert disk.intf.copy_from(STATUS, 1) == b"\0"
    assert image.read_bytes()[512:1024] == data


def test_get_id(disk: Rig) -> None:
    assert request(disk, b.VIRTIO_BLK_T_GET_ID, into=20) == (b.VIRTIO_BLK_S_OK, 21)
    assert disk.intf.copy_from(DATA, 20) == b"xinterface-disk".ljust(20, b"\0")


def test_discard_and_write_zeroes(disk: Rig, image: Path) -> None:
    seg = struct.pack("<QII", 4, 2, 0)
    assert request(disk, b.VIRTIO_BLK_T_WRITE_ZEROES, out=seg)[0] == b.VIRTIO_BLK_S_OK
    assert image.read_bytes()[4 * 512:6 * 512] == bytes(1024)
    assert image.stat().st_size == SIZE
    assert request(disk, b.VIRTIO_BLK_T_DISCARD, out=struct.pack("<QII", 8, 1, 0))[0] == 0
    # §5.2.6.2: unmap on a discard, or an unknown flag: UNSUPP.
    assert request(disk, b.VIRTIO_BLK_T_DISCARD, out=struct.pack("<QII", 8, 1, 1))[0] == 2
    assert request(disk, b.VIRTIO_BLK_T_WRITE_ZEROES, out=struct.pack("<QII", 8, 1, 2))[0] == 2
    beyond = struct.pack("<QII", SIZE // 512 - 1, 2, 0)
    assert request(disk, b.VIRTIO_BLK_T_WRITE_ZEROES, out=beyond)[0] == b.VIRTIO_BLK_S_IOERR


@pytest.mark.parametrize(("kind", "sector", "out", "into"), [
    (b.VIRTIO_BLK_T_IN, SIZE // 512, b"", 512),          # past the capacity
    (b.VIRTIO_BLK_T_IN, SIZE // 512 - 1, b"", 1024),     # running past it
    (b.VIRTIO_BLK_T_IN, 1 << 60, b"", 512),              # far past it
    (b.VIRTIO_BLK_T_IN, 0, b"", 100),                    # not whole sectors
    (b.VIRTIO_BLK_T_OUT, 0, b"x" * 100, 0),
    (b.VIRTIO_BLK_T_IN, 0, b"x" * 512, 0),               # data to fill given device-readable
    (b.VIRTIO_BLK_T_OUT, 0, b"", 512),                   # data to write given device-writable
], ids=["past-end", "across-end", "far", "partial-read", "partial-write", "read-into-readable",
        "write-from-writable"])
def test_bad_requests_get_ioerr_and_change_nothing(disk: Rig, image: Path, kind: int,
                                                   sector: int, out: bytes, into: int) -> None:
    before = image.read_bytes()
    assert request(disk, kind, sector, out=out, into=into)[0] == b.VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before
    assert disk.device.status & Status.DRIVER_OK and not disk.device.error


def test_header_in_a_device_writable_buffer_is_ioerr(disk: Rig) -> None:
    assert request(disk, b.VIRTIO_BLK_T_IN, into=512, header_writable=True)[0] == 1


def test_zero_length_header_is_ioerr(disk: Rig) -> None:
    disk.queue.post([(HDR, 0, False), (STATUS, 1, True)])
    disk.device.notify(0)
    assert disk.queue.used() == [(0, 1)]
    assert disk.intf.copy_from(STATUS, 1) == bytes([b.VIRTIO_BLK_S_IOERR])


def test_unknown_request_type_is_unsupp(disk: Rig) -> None:
    assert request(disk, 99)[0] == b.VIRTIO_BLK_S_UNSUPP


def test_request_without_a_status_byte_is_given_back_empty(disk: Rig) -> None:
    disk.intf.copy_to(HDR, struct.pack("<IIQ", b.VIRTIO_BLK_T_IN, 0, 0))
    disk.queue.post([(HDR, 16, False)])
    disk.device.notify(0)
    assert disk.queue.used() == [(0, 0)]
    assert disk.device.stats["no_status"] == 1


def test_read_only_disk_refuses_writes_and_writes_nothing(image: Path) -> None:
    before = image.read_bytes()
    with VirtioBlk(image, readonly=True) as dev, rig(dev) as r:
        assert dev.device_features >> b.VIRTIO_BLK_F_RO & 1
        assert request(r, b.VIRTIO_BLK_T_OUT, 0, out=b"\xff" * 512) == (1, 1)
        seg = struct.pack("<QII", 0, 1, 0)
        assert request(r, b.VIRTIO_BLK_T_WRITE_ZEROES, out=seg)[0] == 1
        assert request(r, b.VIRTIO_BLK_T_DISCARD, out=seg)[0] == 1
        assert request(r, b.VIRTIO_BLK_T_IN, 0, into=512)[0] == 0
        assert request(r, b.VIRTIO_BLK_T_FLUSH)[0] == 0
    assert image.read_bytes() == before


def test_image_eio_is_ioerr_and_the_device_goes_on(disk: Rig) -> None:
    dev = disk.device
    assert isinstance(dev, VirtioBlk)
    saved = os.dup(dev.fileno())
    # /proc/self/mem fails reads and writes of unmapped addresses (page 0 here) with a real
    # EIO from the kernel: swap it in under the device's file descriptor.
    mem = os.open("/proc/self/mem", os.O_RDWR)
    try:
        os.dup2(mem, dev.fileno())
        assert request(disk, b.VIRTIO_BLK_T_IN, 0, into=512)[0] == b.VIRTIO_BLK_S_IOERR
        assert request(disk, b.VIRTIO_BLK_T_OUT, 0, out=bytes(512))[0] == b.VIRTIO_BLK_S_IOERR
        assert request(disk, b.VIRTIO_BLK_T_FLUSH)[0] == b.VIRTIO_BLK_S_IOERR
        assert dev.last_io_error is not None
        assert dev.stats["io_errors"] == 3
    finally:
        os.dup2(saved, dev.fileno())
        os.close(saved)
        os.close(mem)
    assert request(disk, b.VIRTIO_BLK_T_IN, 0, into=512)[0] == b.VIRTIO_BLK_S_OK


def test_eio_really_is_eio() -> None:
    mem = os.open("/proc/self/mem", os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            os.pread(mem, 512, 0)
        assert exc.value.errno == errno.EIO
    finally:
        os.close(mem)


def test_iothread_keeps_request_order(image: Path) -> None:
    with VirtioBlk(image, iothread=True) as dev, rig(dev, size=32) as r:
        heads = []
        for k in range(6):   # six writes of the same sector then a read: the last write wins
            r.intf.copy_to(BUF + 0x2000 + 512 * k, bytes([k]) * 512)
            r.intf.copy_to(BUF + 0x400 + 16 * k, struct.pack("<IIQ", b.VIRTIO_BLK_T_OUT, 0, 2))
            heads.append(r.queue.post([(BUF + 0x400 + 16 * k, 16, False),
                                       (BUF + 0x2000 + 512 * k, 512, False),
                                       (BUF + 0x600 + k, 1, True)]))
        r.device.notify(0)
        used = r.wait_used(6)
        assert [u[0] for u in used] == heads            # completed in the order made available
        assert r.intf.copy_from(BUF + 0x600, 6) == bytes(6)
    assert image.read_bytes()[1024:1536] == bytes([5]) * 512


def test_size_not_a_multiple_of_512_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(1000))
    with pytest.raises(xi.XInterfaceError) as exc:
        VirtioBlk(path)
    assert exc.value.errno == errno.EINVAL and exc.value.argument == "path"
    assert "1000 bytes" in str(exc.value) and "multiple of 512" in str(exc.value)


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(xi.XInterfaceError) as exc:
        VirtioBlk(tmp_path / "nope.img")
    assert exc.value.errno == errno.ENOENT and "nope.img" in str(exc.value)


@pytest.mark.parametrize("kind", [b.VIRTIO_BLK_T_DISCARD, b.VIRTIO_BLK_T_WRITE_ZEROES])
def test_segments_from_one_buffer_repeated_to_gigabytes_are_refused_uncopied(
        image: Path, kind: int) -> None:
    """A 16 MiB guest whose request names one 15 MiB buffer 254 times (3.7 GiB of
    "segments", through an indirect table): IOERR, having copied no more than the device
    accepts (max_discard_seg segments), and the image untouched."""
    size, big = 256, 15 << 20
    rings, table, data = 0x10000, 0x30000, 1 << 20
    before = image.read_bytes()
    with VirtioBlk(image) as dev, xi.Machine(memory=16 << 20) as m:
        intf = xi.bind(m)
        q = QueueDriver(intf, rings, size)
        assert bring_up(dev, intf, [q]) & Status.DRIVER_OK
        intf.copy_to(HDR, struct.pack("<IIQ", kind, 0, 0))
        intf.copy_to(STATUS, b"\xee")
        intf.copy_to(data, struct.pack("<QII", 0, 1, 0) * 16)
        entries = [(HDR, 16, 0)] + [(data, big, 0)] * (size - 2) + [(STATUS, 1, W)]
        intf.copy_to(table, b"".join(
            DESC.pack(gpa, n, flags | (N if k + 1 < size else 0), k + 1)
            for k, (gpa, n, flags) in enumerate(entries)))
        q.write_desc(0, table, 16 * size, I)
        q.make_available(0)
        tracemalloc.start()
        try:
            dev.notify(0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert q.used() == [(0, 1)]
        assert intf.copy_from(STATUS, 1)[0] == b.VIRTIO_BLK_S_IOERR
        assert peak < 1 << 20
        assert not dev.status & Status.DEVICE_NEEDS_RESET
        dev.disconnect()
    assert image.read_bytes() == before
