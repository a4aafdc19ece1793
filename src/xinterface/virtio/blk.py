"""virtio-blk (virtio 1.2 §5.2) on a raw image file.

Requests are served in the order the driver made them available, one at a time, on the
thread that processes the queue (the notifying thread, or the device's own with
``iothread=True``), so a FLUSH completes after every write completed before it, as §5.2.6
requires. Data moves with ``os.preadv``/``os.pwritev`` straight between the image and the
guest's buffers (zero-copy views). Any error of the image (EIO, ...) becomes
VIRTIO_BLK_S_IOERR for that request; the device and the VMM go on.

With the compiled data path (``accel.dataplane``) the IN, OUT and FLUSH requests that
complete with VIRTIO_BLK_S_OK are served in C with the GIL released; every other request,
and any request that fails there, is served here, in the same order.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Sequence

from .. import accel
from ..devices.persist import State, bad_field, field_int
from ..errors import XInterfaceError
from .chain import DescriptorChain, gather, scatter, split, split_tail, total
from .device import VirtioDevice
from .queue import VirtQueue

VIRTIO_ID_BLOCK = 2          # §5 Device Types
SECTOR = 512                 # §5.2.6: sectors are always 512 bytes

# §5.2.3 Feature bits
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

# §5.2.6 request types and status values
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20     # §5.2.6: the device ID string, NUL-padded

# struct virtio_blk_req header { le32 type; le32 reserved; le64 sector; }
REQ_HEADER = struct.Struct("<IIQ")
# struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; }
SEGMENT = struct.Struct("<QII")
WRITE_ZEROES_UNMAP = 1

# §5.2.4 struct virtio_blk_config, up to write_zeroes_may_unmap and its padding (60 bytes).
CONFIG = struct.Struct("<QII HBB I BBHI BBH III II B3x")
MAX_SEGMENTS = 16            # max_discard_seg and max_write_zeroes_seg
MAX_RANGE_SECTORS = 0xFFFFFFFF >> 9  # so a segment's bytes fit in 32 bits

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
IOV_MAX = 1024               # preadv/pwritev take at most this many buffers per call
ZERO_CHUNK = 1 << 20

_STATUS_STAT = {code: f"status_{code}" for code in
                (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP)}

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class VirtioBlk(VirtioDevice):
    """A disk backed by the raw image at ``path``, of ``size // 512`` sectors.

    ``readonly=True`` offers VIRTIO_BLK_F_RO and opens the image read-only: writes, discards
    and write-zeroes get VIRTIO_BLK_S_IOERR. ``serial`` is the GET_ID string (at most 20 ASCII
    bytes; default: the image's file name). A size that is not a multiple of 512 is refused
    with ``XInterfaceError(EINVAL)``.
    """

    device_id = VIRTIO_ID_BLOCK

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 serial: str | None = None, queue_size: int = 256,
                 iothread: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        ident = (serial if serial is not None else os.path.basename(self.path)).encode(
            "ascii", "replace")[:VIRTIO_BLK_ID_BYTES]
        self.serial = ident.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise XInterfaceError(exc.errno or errno.EIO, f"disk image {self.path}: "
                                  f"{exc.strerror}", argument="path", value=self.path) from None
        size = os.fstat(fd).st_size
        if size % SECTOR:
            os.close(fd)
            raise XInterfaceError(errno.EINVAL, f"disk image {self.path}: its size ({size} "
                                  f"bytes) is not a multiple of {SECTOR}", argument="path",
                                  value=self.path)
        self._fd = fd
        self.last_io_error: OSError | None = None
        self.capacity = size // SECTOR
        features = (1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE
                    | 1 << VIRTIO_BLK_F_FLUSH)
        if readonly:
            features |= 1 << VIRTIO_BLK_F_RO
        else:
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        config = CONFIG.pack(
            self.capacity, 0, queue_size - 2,      # capacity, size_max, seg_max (§5.2.4)
            0, 0, 0, SECTOR,                       # geometry, blk_size
            0, 0, 0, 0,                            # topology
            0, 0, 1,                               # writeback, unused0, num_queues
            MAX_RANGE_SECTORS, MAX_SEGMENTS, 1,    # discard: max sectors, max seg, alignment
            MAX_RANGE_SECTORS, MAX_SEGMENTS,       # write zeroes: max sectors, max seg
            1)                                     # write_zeroes_may_unmap
        super().__init__(queue_sizes=(queue_size,), features=features, config=config,
                         iothread=iothread)

    def save(self) -> State:
        """The device's state and the image's size: the restored machine reopens the image
        by its path (the description's), which must be the same size."""
        return {**self.save_state(), "capacity": self.capacity, "readonly": self.readonly}

    def load(self, state: State) -> None:
        capacity = field_int(state, "capacity", 0, (1 << 64) - 1)
        if capacity != self.capacity:
            raise bad_field("capacity", capacity, f"sectors: the image {self.path} has "
                            f"{self.capacity} now (another image?)")
        if state.get("readonly") is not self.readonly:
            raise bad_field("readonly", state.get("readonly"), f"differs: {self.path} is "
                            f"opened {'read-only' if self.readonly else 'writable'}")
        self.load_state(state)

    def fileno(self) -> int:
        """The image's file descriptor."""
        return self._fd

    def close(self) -> None:
        """Close the image (detach the transport first); harmless twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> VirtioBlk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------
    def handle(self, queue: VirtQueue) -> None:
        # A subclass's own _serve, or a closed image (each request IOERR here), keeps the
        # Python path.
        fast = (accel.dataplane if type(self)._serve is VirtioBlk._serve and self._fd >= 0
                else None)
        while True:
            regions = queue.compiled_regions() if fast is not None else None
            if fast is not None and regions is not None:
                code, served, _, _ = fast.blk(queue, regions, self._fd, self.capacity,
                                              self.readonly, not queue.batching)
                if served:
                    self.stats[_STATUS_STAT[VIRTIO_BLK_S_OK]] += served
                if code == fast.EMPTY:
                    return
            # The next chain is one the compiled path left (or there is none): served here.
            chain = queue.pop()
            if chain is None:
                return
            queue.add_used(chain, self._serve(chain))

    def _serve(self, chain: DescriptorChain) -> int:
        """Serve one request; the bytes written to its device-writable buffers."""
        readable, writable = chain.readable, chain.writable
        # The layout every driver uses (§5.2.6): the header alone in the first buffer, the
        # status alone in the last; anything else is cut where the spec says.
        if writable and writable[-1].nbytes == 1:
            data_in, status = writable[:-1], writable[-1:]
        else:
            data_in, status = split_tail(writable, 1)
        if not status:
            # No device-writable byte: there is nowhere to put a status (§5.2.6).
            self.stats["no_status"] += 1
            return 0
        if readable and readable[0].nbytes == REQ_HEADER.size:
            header, data_out = readable[0], readable[1:]
        else:
            parts, data_out = split(readable, REQ_HEADER.size)
            header = memoryview(gather(parts))
        if header.nbytes < REQ_HEADER.size:
            code, written = VIRTIO_BLK_S_IOERR, 0   # the header is not device-readable
            self.stats["bad_header"] += 1
        else:
            kind, _, sector = REQ_HEADER.unpack(header)
            code, written = self._request(kind, sector, data_out, data_in)
        status[0][0] = code
        self.stats[_STATUS_STAT[code]] += 1
        return written + 1

    def _request(self, kind: int, sector: int, out: list[memoryview],
                 into: list[memoryview]) -> tuple[int, int]:
        """(status, bytes written to ``into``) for a request whose data the driver gives in
        ``out`` (device-readable) or asks for in ``into`` (device-writable)."""
        if kind == VIRTIO_BLK_T_IN:
            if out:   # data the device must write, given as device-readable
                return VIRTIO_BLK_S_IOERR, 0
            return self._rw(os.preadv, sector, into), total(into)
        if kind == VIRTIO_BLK_T_OUT:
            if self.readonly or into:  # §5.2.6.2: no data written on a read-only device
                return VIRTIO_BLK_S_IOERR, 0
            return self._rw(os.pwritev, sector, out), 0
        if kind == VIRTIO_BLK_T_FLUSH:
            return self._call(os.fdatasync, self._fd), 0
        if kind == VIRTIO_BLK_T_GET_ID:
            return VIRTIO_BLK_S_OK, scatter(into, self.serial)
        if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            if self.readonly or into or total(out) > MAX_SEGMENTS * SEGMENT.size:
                # More segments than the configuration allows are refused before a byte is
                # copied: the driver's buffers may add up to 4 GiB (one buffer repeated).
                return VIRTIO_BLK_S_IOERR, 0
            return self._ranges(kind, gather(out)), 0
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_disk(self, sector: int, nbytes: int) -> bool:
        return nbytes % SECTOR == 0 and sector * SECTOR + nbytes <= self.capacity * SECTOR

    def _rw(self, op: Callable[[int, Sequence[memoryview], int], int], sector: int,
            views: list[memoryview]) -> int:
        if not self._in_disk(sector, total(views)):
            return VIRTIO_BLK_S_IOERR
        offset = sector * SECTOR
        try:
            while views:
                n = op(self._fd, views[:IOV_MAX], offset)
                if n <= 0:   # the image shrank under us
                    raise OSError(errno.EIO, "short transfer")
                offset += n
                views = split(views, n)[1]
        except OSError as exc:
            return self._io_error(exc)
        return VIRTIO_BLK_S_OK

    def _ranges(self, kind: int, data: bytes) -> int:
        """DISCARD or WRITE_ZEROES over the segments in ``data`` (§5.2.6)."""
        if not data or len(data) % SEGMENT.size or len(data) // SEGMENT.size > MAX_SEGMENTS:
            return VIRTIO_BLK_S_IOERR
        segments = [SEGMENT.unpack_from(data, i) for i in range(0, len(data), SEGMENT.size)]
        allowed = 0 if kind == VIRTIO_BLK_T_DISCARD else WRITE_ZEROES_UNMAP
        for sector, count, flags in segments:
            if flags & ~allowed:   # §5.2.6.2: unknown flags, or unmap on a discard
                return VIRTIO_BLK_S_UNSUPP
            if not self._in_disk(sector, count * SECTOR):
                return VIRTIO_BLK_S_IOERR
        for sector, count, _ in segments:
            offset, length = sector * SECTOR, count * SECTOR
            punched = _fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                 offset, length) == 0
            if kind == VIRTIO_BLK_T_WRITE_ZEROES and not punched:
                # Reads of the range must return zeroes: write them where holes are unsupported.
                code = self._call(self._zero, offset, length)
                if code != VIRTIO_BLK_S_OK:
                    return code
        return VIRTIO_BLK_S_OK

    def _zero(self, offset: int, length: int) -> None:
        zeros = bytes(min(length, ZERO_CHUNK))
        while length:
            n = os.pwrite(self._fd, zeros[:min(length, ZERO_CHUNK)], offset)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            offset += n
            length -= n

    def _call(self, fn: Callable[..., object], *args: int) -> int:
        try:
            fn(*args)
        except OSError as exc:
            return self._io_error(exc)
        return VIRTIO_BLK_S_OK

    def _io_error(self, exc: OSError) -> int:
        self.stats["io_errors"] += 1
        self.last_io_error = exc
        return VIRTIO_BLK_S_IOERR
