"""The vhost-user wire format (QEMU's docs/interop/vhost-user.rst): request codes, feature
bits, the header and every payload this backend reads or writes, each with its exact size.

All numbers are in the host's byte order (the frontend is a process of the same machine).
Decoding checks the payload's size against the request before a field is read: a frontend
is untrusted, and a short or long payload is a :class:`ProtocolError`, never an exception
from ``struct``.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple


class ProtocolError(Exception):
    """A message this backend cannot accept. ``fatal``: the stream can no longer be trusted
    (a bad header, a torn message), so the connection is dropped; otherwise the request is
    refused (a REPLY_ACK failure, or nothing) and the session goes on."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class Request(enum.IntEnum):
    """Front-end message types (the spec's "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """``VHOST_USER_PROTOCOL_F_*``: bit numbers of GET/SET_PROTOCOL_FEATURES."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# The reserved virtio bit (30, UNUSED in virtio 1.1 §6.3) the protocol took to say that
# GET/SET_PROTOCOL_FEATURES exist.
F_PROTOCOL_FEATURES = 30

# Header flags: the version in bits 0-1, bit 2 on every reply, bit 3 asks for a REPLY_ACK.
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

HEADER = struct.Struct("=III")          # request, flags, size
U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")      # index, num
VRING_ADDR = struct.Struct("=IIQQQQ")   # index, flags, descriptor, used, available, log
MEMORY_HEADER = struct.Struct("=II")    # num regions, padding
MEMORY_REGION = struct.Struct("=QQQQ")  # guest address, size, user address, mmap offset
CONFIG_HEADER = struct.Struct("=III")   # offset, size, flags

# VHOST_MEMORY_BASELINE_NREGIONS: SET_MEM_TABLE carries at most this many regions and fds.
MAX_REGIONS = 8
# The most fds one message carries (SET_MEM_TABLE's, one per region).
MAX_FDS = MAX_REGIONS
# VHOST_USER_MAX_CONFIG_SIZE: the configuration space GET/SET_CONFIG may reach.
MAX_CONFIG_SIZE = 256
# The largest payload of any request this backend knows: a full memory table (264 bytes),
# a full configuration access (268). Anything larger is a broken or hostile stream.
MAX_PAYLOAD = CONFIG_HEADER.size + MAX_CONFIG_SIZE
# The fd-carrying u64 of SET_VRING_KICK/CALL/ERR: the ring index in bits 0-7, bit 8 says
# that no fd is passed (a polling ring).
VRING_INDEX_MASK = 0xFF
VRING_NOFD = 1 << 8
# SET_VRING_ADDR's flags: bit 0 asks for used-ring logging (live migration).
VRING_F_LOG = 1


class Header(NamedTuple):
    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


class Region(NamedTuple):
    """One entry of SET_MEM_TABLE."""

    gpa: int
    size: int
    user_addr: int
    mmap_offset: int


class VringAddr(NamedTuple):
    ring: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


class ConfigAccess(NamedTuple):
    offset: int
    size: int
    flags: int
    data: bytes


def request_name(code: int) -> str:
    try:
        return Request(code).name
    except ValueError:
        return f"request {code}"


def decode_header(raw: bytes) -> Header:
    """The header of a message from the frontend: version 1, no reply flag, a payload no
    larger than any request takes. A bad header is fatal: nothing after it can be framed."""
    if len(raw) != HEADER.size:
        raise ProtocolError(f"header of {len(raw)} bytes, not {HEADER.size}", fatal=True)
    header = Header(*HEADER.unpack(raw))
    if header.flags & VERSION_MASK != VERSION:
        raise ProtocolError(f"{request_name(header.request)}: version "
                            f"{header.flags & VERSION_MASK}, not {VERSION}", fatal=True)
    if header.flags & ~KNOWN_FLAGS or header.flags & FLAG_REPLY:
        raise ProtocolError(f"{request_name(header.request)}: flags {header.flags:#x} are not "
                            "those of a request", fatal=True)
    if header.size > MAX_PAYLOAD:
        raise ProtocolError(f"{request_name(header.request)}: payload of {header.size} bytes, "
                            f"more than any request takes ({MAX_PAYLOAD})", fatal=True)
    return header


def decode_reply_header(raw: bytes, request: int) -> Header:
    """The header of the backend's reply to ``request`` (the frontend's side): version 1,
    the reply flag, the request's own code, a payload no larger than any reply takes. A
    backend is untrusted too: anything else is fatal, as nothing after it can be framed."""
    if len(raw) != HEADER.size:
        raise ProtocolError(f"reply header of {len(raw)} bytes, not {HEADER.size}", fatal=True)
    header = Header(*HEADER.unpack(raw))
    what = f"reply to {request_name(request)}"
    if header.flags & VERSION_MASK != VERSION or header.flags & ~KNOWN_FLAGS \
            or not header.flags & FLAG_REPLY:
        raise ProtocolError(f"{what}: flags {header.flags:#x} are not those of a reply",
                            fatal=True)
    if header.request != request:
        raise ProtocolError(f"{what}: the reply is to {request_name(header.request)}",
                            fatal=True)
    if header.size > MAX_PAYLOAD:
        raise ProtocolError(f"{what}: payload of {header.size} bytes, more than any reply "
                            f"takes ({MAX_PAYLOAD})", fatal=True)
    return header


def encode(request: int, payload: bytes = b"", *, reply: bool = False,
           need_reply: bool = False) -> bytes:
    """A whole message: header and payload."""
    flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def _exact(what: str, payload: bytes, layout: struct.Struct) -> tuple[int, ...]:
    if len(payload) != layout.size:
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes, not {layout.size}")
    return layout.unpack(payload)


def decode_u64(what: str, payload: bytes) -> int:
    value: int = _exact(what, payload, U64)[0]
    return value


def decode_state(what: str, payload: bytes) -> tuple[int, int]:
    index, num = _exact(what, payload, VRING_STATE)
    return index, num


def encode_memory(regions: list[Region]) -> bytes:
    """SET_MEM_TABLE's payload for ``regions`` (1 to 8; the fds go beside it)."""
    return MEMORY_HEADER.pack(len(regions), 0) + b"".join(
        MEMORY_REGION.pack(*region) for region in regions)


def decode_addr(payload: bytes) -> VringAddr:
    return VringAddr(*_exact("SET_VRING_ADDR", payload, VRING_ADDR))


def decode_memory(payload: bytes) -> list[Region]:
    """SET_MEM_TABLE's regions: 1 to 8 of them, exactly as many as the payload holds. The
    fixed 8-slot array QEMU sends is accepted too (the unused slots are zeros)."""
    if len(payload) < MEMORY_HEADER.size:
        raise ProtocolError(f"SET_MEM_TABLE: payload of {len(payload)} bytes, shorter than "
                            f"its {MEMORY_HEADER.size}-byte header")
    count, _ = MEMORY_HEADER.unpack_from(payload)
    if not 1 <= count <= MAX_REGIONS:
        raise ProtocolError(f"SET_MEM_TABLE: {count} regions, not 1 to {MAX_REGIONS}")
    body = len(payload) - MEMORY_HEADER.size
    if body not in (count * MEMORY_REGION.size, MAX_REGIONS * MEMORY_REGION.size):
        raise ProtocolError(f"SET_MEM_TABLE: payload of {len(payload)} bytes for {count} "
                            "regions")
    return [Region(*MEMORY_REGION.unpack_from(payload, MEMORY_HEADER.size + i * MEMORY_REGION.size))
            for i in range(count)]


def decode_config(what: str, payload: bytes, *, with_data: bool) -> ConfigAccess:
    """GET_CONFIG/SET_CONFIG: the header, and ``size`` bytes after it (GET_CONFIG's are
    a placeholder the reply fills in)."""
    if len(payload) < CONFIG_HEADER.size:
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes, shorter than its "
                            f"{CONFIG_HEADER.size}-byte header")
    offset, size, flags = CONFIG_HEADER.unpack_from(payload)
    if size > MAX_CONFIG_SIZE or offset > MAX_CONFIG_SIZE - size:
        raise ProtocolError(f"{what}: offset {offset} size {size} is outside the "
                            f"{MAX_CONFIG_SIZE}-byte configuration space")
    data = payload[CONFIG_HEADER.size:]
    if (with_data or data) and len(data) != size:
        raise ProtocolError(f"{what}: {len(data)} bytes of data for a size of {size}")
    return ConfigAccess(offset, size, flags, bytes(data))


def encode_config(offset: int, data: bytes, flags: int = 0) -> bytes:
    return CONFIG_HEADER.pack(offset, len(data), flags) + data
