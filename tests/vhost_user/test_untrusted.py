"""An untrusted frontend: every malformed message, bad table, bad ring and dying peer is
answered with an error or ends that connection, with one line that says why, and the
backend serves the next frontend. Then the message stream fuzzed (hypothesis)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xinterface.vhost_user.memory import MemoryTable
from xinterface.vhost_user.protocol import (
    HEADER,
    MAX_PAYLOAD,
    MEMORY_HEADER,
    MEMORY_REGION,
    U64,
    VRING_ADDR,
    VRING_STATE,
    Region,
    Request,
)
from xinterface.virtio import VirtioRng
from xinterface.virtio.driver import QueueDriver

from .frontend import MEMORY, USER_BASE, Backend, Frontend, new_eventfd

RING, DATA = 0x1000, 0x10000


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    fds = open_fds()
    with Backend(VirtioRng(), tmp_path, timeout=0.5) as b:
        yield b
        assert_serves(b)
    assert open_fds() == fds   # every fd any frontend passed was closed


def assert_serves(backend: Backend) -> None:
    """A well-behaved frontend after the bad one gets random bytes."""
    with backend.connect() as fe:
        fe.negotiate()
        assert fe.mem_table() == 0
        q = QueueDriver(fe.intf, RING, 16)
        assert fe.start_ring(0, q) == 0
        fe.submit(0, q, [(DATA, 32, True)])
        assert fe.wait_call(0)
        assert q.used() == [(0, 32)]


def refused(backend: Backend, fe: Frontend, status: int, *words: str) -> None:
    assert status == 1
    line = backend.lines[-1]
    assert all(w in line for w in words), line


def dropped(backend: Backend, fe: Frontend, *words: str) -> None:
    assert fe.closed_by_backend()
    line = backend.lines[-1]
    assert line.startswith("vhost-user: ") and all(w in line for w in words), line


def table(*regions: Region) -> bytes:
    return MEMORY_HEADER.pack(len(regions), 0) + b"".join(MEMORY_REGION.pack(*r)
                                                          for r in regions)


# --- headers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "size", "words"), [
    (0x2, 0, ("version 2",)),
    (0x5, 0, ("flags 0x5",)),
    (0x1 | 1 << 9, 0, ("flags",)),
    (0x1, MAX_PAYLOAD + 1, ("payload of",)),
    (0x1, 0xFFFFFFFF, ("payload of",)),
])
def test_a_bad_header_drops_the_connection(backend: Backend, flags: int, size: int,
                                           words: tuple[str, ...]) -> None:
    with backend.connect() as fe:
        fe.send_raw(HEADER.pack(Request.GET_FEATURES, flags, size))
        dropped(backend, fe, *words)


def test_unknown_and_unsupported_requests_are_refused(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        refused(backend, fe, fe.ack(99, b"xyz"), "request 99", "not implemented")
        refused(backend, fe, fe.ack(Request.SET_LOG_BASE, bytes(16)), "SET_LOG_BASE")
        refused(backend, fe, fe.ack(Request.SET_FEATURES, b"\0" * 4), "4 bytes", "not 8")
        refused(backend, fe, fe.ack(Request.SET_FEATURES, U64.pack(1 << 63)), "never offered")
        refused(backend, fe, fe.ack(Request.SET_PROTOCOL_FEATURES, U64.pack(1 << 40)),
                "never offered")
        refused(backend, fe, fe.ack(Request.SET_OWNER, b"x"), "none expected")
        # Still in step: the next request is answered.
        assert len(fe.call(Request.GET_FEATURES)) == 8


def test_a_request_that_needs_an_answer_it_cannot_have_drops_the_connection(
        backend: Backend) -> None:
    with backend.connect() as fe:
        fe.send(Request.GET_VRING_BASE, VRING_STATE.pack(7, 0))
        dropped(backend, fe, "ring 7 does not exist")


# --- the memory table ------------------------------------------------------------------------
@pytest.mark.parametrize(("regions", "words"), [
    ([Region(0, 0, USER_BASE, 0)], ("empty",)),
    ([Region(0, MEMORY, USER_BASE, 0), Region(MEMORY // 2, 4096, USER_BASE << 1, 0)],
     ("overlaps", "gpa")),
    ([Region(0, 4096, USER_BASE, 0), Region(1 << 30, 4096, USER_BASE, 4096)],
     ("overlaps", "user_addr")),
    ([Region(0, MEMORY + 4096, USER_BASE, 0)], ("past the end of its file",)),
    ([Region(0, 8192, USER_BASE, MEMORY - 4096)], ("past the end of its file",)),
    ([Region((1 << 64) - 4096, 8192, USER_BASE, 0)], ("gpa + size wraps",)),
    ([Region(0, 8192, (1 << 64) - 4096, 0)], ("user address + size wraps",)),
    ([Region(0, 8192, USER_BASE, (1 << 64) - 4096)], ("mmap offset + size wraps",)),
    ([Region(0, 4096, USER_BASE, 100)], ("not page aligned",)),
])
def test_a_bad_memory_table_is_refused_and_nothing_mapped(
        backend: Backend, regions: list[Region], words: tuple[str, ...]) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        refused(backend, fe, fe.mem_table(regions), "SET_MEM_TABLE", *words)
        q = QueueDriver(fe.intf, RING, 16)
        refused(backend, fe, fe.start_ring(0, q), "kick before any memory table")


def test_missing_extra_and_wrong_fds_are_refused(backend: Backend) -> None:
    region = Region(0, MEMORY, USER_BASE, 0)
    with backend.connect() as fe:
        fe.negotiate()
        refused(backend, fe, fe.mem_table([region], []), "0 fds passed, 1 expected")
        refused(backend, fe, fe.mem_table([region], [fe.memfd, fe.memfd]), "2 fds passed")
        efd = new_eventfd()
        try:
            refused(backend, fe, fe.mem_table([region], [efd]), "not a memory file")
            refused(backend, fe, fe.ack(Request.SET_VRING_CALL, U64.pack(0), [efd, efd]),
                    "2 fds passed")
        finally:
            os.close(efd)
        refused(backend, fe, fe.ack(Request.SET_MEM_TABLE, table(region)[:20], [fe.memfd]),
                "for 1 regions")
        # Nine regions are longer than any request: the stream is not trusted further.
        nine = table(*[Region(i << 20, 4096, USER_BASE + (i << 20), 0) for i in range(9)])
        fe.send(Request.SET_MEM_TABLE, nine, [fe.memfd] * 8, need_reply=True)
        dropped(backend, fe, "payload of 296 bytes")


def test_more_fds_than_any_request_takes_drop_the_connection(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.send(Request.SET_VRING_CALL, U64.pack(0), [fe.memfd] * 20)
        dropped(backend, fe, "more fds")


# --- rings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 3, 100, 512, 1 << 16])
def test_a_queue_size_that_is_not_a_power_of_two_up_to_the_maximum_is_refused(
        backend: Backend, size: int) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        refused(backend, fe, fe.ack(Request.SET_VRING_NUM, VRING_STATE.pack(0, size)),
                f"size {size} is not a power of two from 1 to 256")


@pytest.mark.parametrize("where", [MEMORY, MEMORY - 16, -0x10000])
def test_rings_outside_every_region_are_refused(backend: Backend, where: int) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        q = QueueDriver(fe.intf, RING, 16)
        refused(backend, fe, fe.start_ring(0, q, user_offset=USER_BASE + where - RING),
                "in no memory region")


def test_bad_ring_indexes_and_fds_are_refused(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        refused(backend, fe, fe.ack(Request.SET_VRING_NUM, VRING_STATE.pack(1, 16)),
                "ring 1 does not exist")
        refused(backend, fe, fe.ack(Request.SET_VRING_KICK, U64.pack(1 << 9)), "bits other")
        refused(backend, fe, fe.ack(Request.SET_VRING_BASE, VRING_STATE.pack(0, 1 << 16)),
                "not a 16-bit index")
        refused(backend, fe, fe.ack(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 2)),
                "neither 0 nor 1")
        refused(backend, fe, fe.ack(Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, 0, 0, 0, 0)
                                    [:-1]), "39 bytes")
        r, w = os.pipe()
        try:
            refused(backend, fe, fe.ack(Request.SET_VRING_KICK, U64.pack(0), [r]),
                    "not an eventfd")
        finally:
            os.close(r)
            os.close(w)
        refused(backend, fe, fe.ack(Request.SET_VRING_KICK, U64.pack(0), [fe.memfd]),
                "not an eventfd")


def test_a_kick_before_the_rings_addresses_is_refused(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        efd = new_eventfd()
        try:
            refused(backend, fe, fe.ack(Request.SET_VRING_KICK, U64.pack(0), [efd]),
                    "kick before its size and addresses")
        finally:
            os.close(efd)


def test_a_descriptor_outside_memory_breaks_the_device_and_signals_err(
        backend: Backend) -> None:
    with backend.connect() as fe:
        fe.negotiate()
        fe.mem_table()
        err = new_eventfd()
        try:
            assert fe.ack(Request.SET_VRING_ERR, U64.pack(0), [err]) == 0
            q = QueueDriver(fe.intf, RING, 16)
            assert fe.start_ring(0, q) == 0
            fe.submit(0, q, [(MEMORY - 8, 64, True)])   # straddles the end of the region
            assert wait_readable(err)
            assert q.used() == []
        finally:
            os.close(err)


def wait_readable(fd: int, timeout: float = 10.0) -> bool:
    import select

    return bool(select.select([fd], [], [], timeout)[0])


# --- peers that stop or die ------------------------------------------------------------------
def test_a_frontend_that_dies_mid_message_is_dropped(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.send_raw(HEADER.pack(Request.SET_MEM_TABLE, 1, 40) + bytes(10), [fe.memfd])
        fe.sock.shutdown(socket.SHUT_WR)
        dropped(backend, fe, "mid-message", "10 of 40")


def test_a_frontend_that_stalls_mid_message_is_dropped_after_the_timeout(
        backend: Backend) -> None:
    with backend.connect() as fe:
        start = time.monotonic()
        fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 8) + bytes(3))
        dropped(backend, fe, "stopped mid-message")
        assert time.monotonic() - start < 5


def test_a_frontend_that_dies_with_a_half_header_is_dropped(backend: Backend) -> None:
    with backend.connect() as fe:
        fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 8)[:5])
        fe.sock.shutdown(socket.SHUT_WR)
        dropped(backend, fe, "mid-message")


# --- fuzzing ---------------------------------------------------------------------------------
_fields = st.integers(0, (1 << 64) - 1) | st.sampled_from([0, 1, 4096, MEMORY, USER_BASE, 1 << 63])
_payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(U64.pack, st.integers(0, (1 << 64) - 1)),
    st.builds(VRING_STATE.pack, st.integers(0, 3), st.sampled_from([0, 1, 2, 16, 256, 1 << 31])),
    st.builds(VRING_ADDR.pack, st.integers(0, 2), st.integers(0, 1),
              *[st.sampled_from([USER_BASE, USER_BASE + 0x1000, 0, MEMORY]) for _ in range(3)],
              st.just(0)),
    st.lists(st.builds(Region, _fields, _fields, _fields, _fields), min_size=0,
             max_size=9).map(lambda rs: table(*rs)),
)
_requests = st.sampled_from(list(Request)) | st.integers(0, 60)
_messages = st.lists(st.tuples(_requests, st.sampled_from([1, 1 | 8, 5, 0, 0xFFFF]),
                               _payloads, st.integers(0, 3), st.booleans(),
                               st.sampled_from(["memfd", "eventfd", "pipe"])),
                     max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(prepared=st.booleans(), messages=_messages)
def test_fuzzed_message_streams_never_break_the_backend(
        tmp_path_factory: pytest.TempPathFactory, prepared: bool,
        messages: list[tuple[int, int, bytes, int, bool, str]]) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    fds = open_fds()
    with Backend(VirtioRng(), directory, timeout=0.2) as backend:
        fe = backend.connect()
        eventfd = new_eventfd()
        r, w = os.pipe()
        try:
            if prepared:   # the fuzzed stream meets a running ring
                fe.negotiate()
                fe.mem_table()
                q = QueueDriver(fe.intf, RING, 16)
                assert fe.start_ring(0, q) == 0
                q.post([(DATA, 32, True)])
            for request, flags, payload, nfds, torn, kind in messages:
                fd = {"memfd": fe.memfd, "eventfd": eventfd, "pipe": r}[kind]
                data = HEADER.pack(request, flags, len(payload)) + payload
                if torn:   # a message whose header lies about its size
                    data = data[:len(data) // 2] if len(data) > 1 else data
                try:
                    fe.send_raw(data, [fd] * nfds)
                except (BrokenPipeError, ConnectionResetError):
                    break
        finally:
            fe.close()
            for fd in (eventfd, r, w):
                os.close(fd)
        assert_serves(backend)
        assert backend.thread.is_alive()
        assert all(line.startswith("vhost-user: ") and "\n" not in line
                   for line in backend.lines)
        assert not any("internal error" in line for line in backend.lines), backend.lines
    assert open_fds() == fds



# --- a frontend that shrinks its memory --------------------------------------------------------
def test_a_frontend_cannot_shrink_the_memory_under_serve(tmp_path: Path) -> None:
    """``xinterface serve rng`` in a process of its own (a SIGBUS there would end it, not the
    test): the memfd the frontend shares is sealed against shrinking before it is mapped,
    so the frontend's truncation fails and the next request is served; a memfd that cannot
    be sealed is refused in one line and the backend serves on."""
    from tests.conftest import wait_for

    from .test_cli import serve

    path = tmp_path / "rng.sock"
    p = serve("rng", "--socket-path", str(path))
    try:
        assert wait_for(path.exists, timeout=30)
        with Frontend.connect(path) as fe:
            fe.negotiate()
            # The memory shared: a memfd that allows seals and has none yet.
            assert fe.host.memory is not None
            fe.host.memory.close()
            os.close(fe.memfd)
            fe.memfd = os.memfd_create("shrinking", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fe.memfd, MEMORY)
            assert fcntl.fcntl(fe.memfd, fcntl.F_GET_SEALS) == 0
            assert fe.mem_table() == 0
            assert fcntl.fcntl(fe.memfd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
            with pytest.raises(PermissionError):
                os.ftruncate(fe.memfd, 4096)    # would have cut the pages the rings live in
            fe.host.memory = MemoryTable([Region(0, MEMORY, USER_BASE, 0)], [os.dup(fe.memfd)])
            q = QueueDriver(fe.intf, RING, 16)
            assert fe.start_ring(0, q) == 0
            fe.submit(0, q, [(DATA, 32, True)])
            assert fe.wait_call(0)
            assert q.used() == [(0, 32)] and fe.intf.copy_from(DATA, 32) != bytes(32)
        with Frontend.connect(path, sealing=False) as fe:
            fe.negotiate()
            assert fe.mem_table() == 1          # REPLY_ACK: refused
        with Frontend.connect(path) as fe:      # and the next frontend is served
            assert U64.unpack(fe.call(Request.GET_QUEUE_NUM))[0] == 1
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    assert p.returncode == 0
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "SET_MEM_TABLE refused" in lines[0] and \
        "could shrink" in lines[0], lines
