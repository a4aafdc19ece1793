"""xioevent on real guests: validation, exact match and fall-through, payloads, ordering,
concurrency, deassign semantics, handler errors."""

from __future__ import annotations

import errno
import io
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm

pytestmark = needs_kvm

PIO = xi.XIOEventFlags.PIO
TABLE = 0x100000
END, PIO_W, MMIO_W, PIO_R, MMIO_R = range(5)
MMIO_BASE = 0xD0000000
Access = tuple[int, int, int, int]  # kind, size, addr, value


def table(accesses: list[Access]) -> bytes:
    return b"".join(struct.pack("<BB6xQQ", *a) for a in [*accesses, (END, 0, 0, 0)])


@dataclass
class Replay:
    machine: xi.Machine
    intf: xi.XInterface
    console: io.BytesIO = field(default_factory=io.BytesIO)


@pytest.fixture
def replay(guest: Assemble) -> Iterator[Callable[[list[Access]], Replay]]:
    """A long-mode machine that will replay ``accesses`` when run."""
    made: list[xi.Machine] = []

    def make(accesses: list[Access]) -> Replay:
        console = io.BytesIO()
        m = xi.Machine(memory=4 << 20, console=console)
        made.append(m)
        m.load_flat(guest("replay", mode="long", TABLE=TABLE), gpa=0x1000, mode="long")
        intf = xi.bind(m)
        intf.copy_to(TABLE, table(accesses))
        return Replay(m, intf, console)

    yield make
    for m in made:
        m.close()


def recorder(log: list[tuple[int, bytes]]) -> Callable[[xi.XIOEvent, bytes], None]:
    def signal(ev: xi.XIOEvent, payload: bytes) -> None:
        log.append((ev.addr, payload))

    return signal


# --- validation -------------------------------------------------------------------------------


@pytest.fixture
def intf() -> Iterator[xi.XInterface]:
    with xi.Machine(memory=1 << 20) as m:
        yield xi.bind(m)


@pytest.mark.parametrize(
    ("addr", "length", "flags", "argument"),
    [
        (0x3F8, 3, PIO, "length"),
        (0x3F8, 0, PIO, "length"),
        (0x3F8, 16, 0, "length"),
        (0x10000, 1, PIO, "addr"),
        (-1, 1, 0, "addr"),
        (2**64 - 4, 8, 0, "addr"),
        (2**64, 1, 0, "addr"),
        (0x3F8, 1, 2, "flags"),
        (0x3F8, 1, 0x80000000, "flags"),
        (0x3F8, 1, -1, "flags"),
    ],
)
def test_invalid_arguments_are_einval(intf: xi.XInterface, addr: int, length: int, flags: int,
                                      argument: str) -> None:
    sizes = len(intf.vm.pio_bus), len(intf.vm.mmio_bus)
    with pytest.raises(xi.XInterfaceError) as info:
        intf.ioevent(addr, length, flags)
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == argument
    assert argument in str(info.value)
    assert (len(intf.vm.pio_bus), len(intf.vm.mmio_bus)) == sizes


def test_seed_constants() -> None:
    assert xi.KVM_XIOEVENT_FLAG_PIO == 1
    assert xi.KVM_XIOEVENT_VALID_FLAG_MASK == 1


def test_duplicate_is_eexist_and_other_lengths_are_not(intf: xi.XInterface) -> None:
    ev = intf.ioevent(0x3F8, 1, PIO)
    with pytest.raises(xi.XInterfaceError) as info:
        intf.ioevent(0x3F8, 1, PIO)
    assert info.value.errno == errno.EEXIST
    intf.ioevent(0x3F8, 2, PIO)             # another length: another event
    intf.ioevent(0x3F8, 1)                  # the MMIO bus is another space
    ev.deassign()
    intf.ioevent(0x3F8, 1, PIO).deassign()  # the address is free again


def test_last_mmio_address_fits(intf: xi.XInterface) -> None:
    # The seed's check is addr + len < addr in 64-bit arithmetic: an event ending exactly at
    # 2**64 wraps, so the last 8-byte event starts at 2**64 - 9.
    ev = intf.ioevent(2**64 - 9, 8)
    assert (ev.addr, ev.length, ev.flags) == (2**64 - 9, 8, xi.XIOEventFlags(0))
    with pytest.raises(xi.XInterfaceError):
        intf.ioevent(2**64 - 8, 8)


def test_event_holds_and_deassign_drops_the_interface_reference(intf: xi.XInterface) -> None:
    ev = intf.ioevent(0x80, 1, PIO)
    intf.put()
    assert not intf.released
    ev.deassign()
    assert intf.released
    ev.deassign()  # harmless twice


def test_100k_events_on_a_bus(intf: xi.XInterface) -> None:
    events = [intf.ioevent(MMIO_BASE + 8 * i, 4) for i in range(100_000)]
    assert len(intf.vm.mmio_bus) == 100_000
    for ev in events:
        ev.deassign()
    assert len(intf.vm.mmio_bus) == 0


# --- dispatch on real guests ------------------------------------------------------------------


def test_pio_payloads_of_each_size(replay: Callable[[list[Access]], Replay]) -> None:
    r = replay([(PIO_W, 1, 0x300, 0xAB), (PIO_W, 2, 0x302, 0xBEEF),
                (PIO_W, 4, 0x304, 0x12345678)])
    log: list[tuple[int, bytes]] = []
    for port, size in [(0x300, 1), (0x302, 2), (0x304, 4)]:
        r.intf.ioevent(port, size, PIO, signal=recorder(log))
    assert r.machine.run(timeout=30).reason == "hlt"
    assert log == [(0x300, b"\xab"), (0x302, b"\xef\xbe"), (0x304, b"\x78\x56\x34\x12")]


def test_mmio_payloads_of_each_size(replay: Callable[[list[Access]], Replay]) -> None:
    values = {1: 0x5A, 2: 0xA55A, 4: 0xDEADBEEF, 8: 0x0123456789ABCDEF}
    r = replay([(MMIO_W, n, MMIO_BASE + 16 * n, v) for n, v in values.items()])
    log: list[tuple[int, bytes]] = []
    for n in values:
        r.intf.ioevent(MMIO_BASE + 16 * n, n, signal=recorder(log))
    assert r.machine.run(timeout=30).reason == "hlt"
    assert log == [(MMIO_BASE + 16 * n, v.to_bytes(n, "little")) for n, v in values.items()]


def test_exact_match_then_fall_through_to_a_range_device(
        replay: Callable[[list[Access]], Replay]) -> None:
    port = 0x500
    r = replay([(PIO_W, 1, port, 0x11), (PIO_W, 2, port, 0x2222), (PIO_W, 4, port, 0x44444444),
                (PIO_W, 1, port + 1, 0x55), (PIO_R, 2, port, 0)])
    ev1: list[tuple[int, bytes]] = []
    ev2: list[tuple[int, bytes]] = []
    beneath: list[tuple[str, int, bytes]] = []
    r.intf.ioevent(port, 1, PIO, signal=recorder(ev1))
    r.intf.ioevent(port, 2, PIO, signal=recorder(ev2))

    def write(offset: int, data: bytes) -> None:
        beneath.append(("w", offset, data))

    def read(offset: int, size: int) -> bytes:
        beneath.append(("r", offset, bytes(size)))
        return bytes(size)

    r.intf.iorange(port, 4, PIO, read=read, write=write, name="beneath")
    assert r.machine.run(timeout=30).reason == "hlt"
    assert ev1 == [(port, b"\x11")]
    assert ev2 == [(port, b"\x22\x22")]
    # The 4-byte write and the write to port+1 match no event: the range device gets them;
    # reads never go to events.
    assert beneath == [("w", 0, b"\x44" * 4), ("w", 1, b"\x55"), ("r", 0, b"\0\0")]


def test_range_device_may_decline(replay: Callable[[list[Access]], Replay]) -> None:
    r = replay([(PIO_W, 1, 0x600, 1)])
    r.intf.iorange(0x600, 1, PIO, write=lambda offset, data: False)
    r.machine.strict = True
    with pytest.raises(xi.GuestIOError) as info:
        r.machine.run(timeout=30)
    assert "unhandled 1-byte write to port 0x600" in str(info.value)


def test_overlapping_ranges_are_eexist(intf: xi.XInterface) -> None:
    intf.iorange(0x1000, 0x100)
    for base, size in [(0x10FF, 1), (0xFFF, 2), (0x1000, 0x100), (0x1080, 1)]:
        with pytest.raises(xi.XInterfaceError) as info:
            intf.iorange(base, size)
        assert info.value.errno == errno.EEXIST
    intf.iorange(0x1100, 1)
    intf.iorange(0xFFF, 1)


def test_no_signal_claims_and_drops(replay: Callable[[list[Access]], Replay]) -> None:
    r = replay([(PIO_W, 1, 0x700, 7), (PIO_W, 1, 0x700, 8)])
    beneath: list[bytes] = []
    ev = r.intf.ioevent(0x700, 1, PIO)
    r.intf.iorange(0x700, 1, PIO, write=lambda o, d: beneath.append(d))
    r.machine.strict = True  # a dropped write is claimed: strict mode must not complain
    assert r.machine.run(timeout=30).reason == "hlt"
    assert beneath == []
    assert ev.signal is None


def test_rep_outs_element_by_element(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("string_io"), gpa=0x1000, mode="real")
        got: list[bytes] = []
        intf = xi.bind(m)
        intf.ioevent(0xE9, 1, PIO, signal=lambda ev, p: got.append(p))
        intf.ioevent(0xE9, 2, PIO, signal=lambda ev, p: got.append(p))
        assert m.run(timeout=10).reason == "hlt"
    # rep outsb of 8 bytes then rep outsw of "ABCDEF": one call per element, in order.
    assert got == [b"\xff"] * 4 + [b"\xe9"] * 4 + [b"AB", b"CD", b"EF"]


def test_random_stream_arrives_in_order(replay: Callable[[list[Access]], Replay]) -> None:
    rng = random.Random(1234)
    ports = [0x100 + 4 * i for i in range(40)]
    addrs = [MMIO_BASE + 0x100 * i for i in range(40)]
    accesses: list[Access] = []
    for _ in range(10_000):
        if rng.random() < 0.5:
            size = rng.choice((1, 2, 4))
            accesses.append((PIO_W, size, rng.choice(ports), rng.getrandbits(8 * size)))
        else:
            size = rng.choice((1, 2, 4, 8))
            accesses.append((MMIO_W, size, rng.choice(addrs), rng.getrandbits(8 * size)))
    r = replay(accesses)
    log: list[tuple[int, bytes]] = []
    for port in ports:
        for size in (1, 2, 4):
            r.intf.ioevent(port, size, PIO, signal=recorder(log))
    for addr in addrs:
        for size in (1, 2, 4, 8):
            r.intf.ioevent(addr, size, signal=recorder(log))
    assert r.machine.run(timeout=120).reason == "hlt"
    assert log == [(a, v.to_bytes(n, "little")) for _, n, a, v in accesses]


def test_two_vcpus_lose_and_duplicate_nothing(guest: Assemble) -> None:
    count = 3000
    with xi.Machine(memory=1 << 20, vcpus=2) as m:
        m.load_flat(guest("vcpu_writes", PORT=0x510, COUNT=count), mode="protected")
        seen: dict[int, list[int]] = {0: [], 1: []}
        threads: dict[int, set[int]] = {0: set(), 1: set()}

        def signal(ev: xi.XIOEvent, payload: bytes) -> None:
            value = int.from_bytes(payload, "little")
            seen[value >> 24].append(value & 0xFFFFFF)
            threads[value >> 24].add(threading.get_ident())

        xi.bind(m).ioevent(0x510, 4, PIO, signal=signal)
        assert m.run(timeout=120).reason == "hlt"
    assert seen == {0: list(range(1, count + 1)), 1: list(range(1, count + 1))}
    assert threads[0].isdisjoint(threads[1])  # each handler ran on its own vCPU's thread


def test_deassign_from_another_thread_is_final(guest: Assemble) -> None:
    port = 0x520
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("write_forever", PORT=port), mode="protected")
        intf = xi.bind(m)
        after_deassign = 0
        done = threading.Event()
        returned = False
        calls = 0

        def signal(ev: xi.XIOEvent, payload: bytes) -> None:
            nonlocal after_deassign, calls
            calls += 1
            if returned:
                after_deassign += 1

        def churn() -> None:
            nonlocal returned
            try:
                for _ in range(200):
                    returned = False
                    target = calls + 3
                    ev = intf.ioevent(port, 4, PIO, signal=signal)
                    deadline = time.monotonic() + 10
                    while calls < target and time.monotonic() < deadline:
                        time.sleep(0)
                    ev.deassign()
                    returned = True
                    time.sleep(0.0005)  # let the guest write more: none may arrive
            finally:
                done.set()
                m.stop()

        worker = threading.Thread(target=churn)
        worker.start()
        result = m.run(timeout=120)
        worker.join()
        assert done.is_set()
        assert result.reason == "stopped"
        assert calls >= 600
        assert after_deassign == 0


def test_register_and_deassign_churn_while_vcpus_run(guest: Assemble) -> None:
    count = 1000
    with xi.Machine(memory=1 << 20, vcpus=2) as m:
        m.load_flat(guest("vcpu_writes", PORT=0x530, COUNT=count), mode="protected")
        intf = xi.bind(m)
        got: list[int] = []
        intf.ioevent(0x530, 4, PIO, signal=lambda ev, p: got.append(int.from_bytes(p, "little")))
        stop = threading.Event()
        churned = 0

        def churn() -> None:
            nonlocal churned
            while not stop.is_set():
                evs = [intf.ioevent(0x540 + i, 4, PIO) for i in range(20)]
                evs += [intf.ioevent(MMIO_BASE + i, 4) for i in range(20)]
                for ev in evs:
                    ev.deassign()
                churned += 1
                # A thread that never blocks makes every vCPU exit wait for the GIL's switch
                # interval (5 ms): yield, as any polite client of a Python VMM must.
                time.sleep(0)

        worker = threading.Thread(target=churn)
        worker.start()
        try:
            assert m.run(timeout=120).reason == "hlt"
        finally:
            stop.set()
            worker.join()
    assert sorted(got) == sorted([(c << 24) | i for c in (0, 1) for i in range(1, count + 1)])
    assert churned > 0


# --- handlers ---------------------------------------------------------------------------------


def test_handler_may_call_the_xinterface(replay: Callable[[list[Access]], Replay]) -> None:
    r = replay([(PIO_W, 1, 0x800, 1), (PIO_W, 1, 0x800, 2), (PIO_W, 1, 0x801, 3),
                (PIO_W, 1, 0x801, 4)])
    log: list[tuple[int, bytes]] = []

    def first(ev: xi.XIOEvent, payload: bytes) -> None:
        log.append((ev.addr, payload))
        ev.deassign()                                   # itself
        ev.intf.ioevent(0x801, 1, PIO, signal=second)   # a new one
        ev.intf.copy_to(0x9000, payload)                # memory services too
        with ev.intf.vmap(0x9000, 1) as v:
            assert bytes(v.addr) == payload

    def second(ev: xi.XIOEvent, payload: bytes) -> None:
        log.append((ev.addr, payload))

    r.intf.ioevent(0x800, 1, PIO, signal=first)
    assert r.machine.run(timeout=30).reason == "hlt"
    # After deassigning itself the second write to 0x800 is unhandled.
    assert log == [(0x800, b"\x01"), (0x801, b"\x03"), (0x801, b"\x04")]


def test_priv_is_the_clients(intf: xi.XInterface) -> None:
    ev = intf.ioevent(0x900, 1, PIO)
    ev.priv = {"mine": 1}
    assert ev.priv == {"mine": 1}


def test_handler_exception_stops_the_machine(replay: Callable[[list[Access]], Replay]) -> None:
    r = replay([(PIO_W, 2, 0xA00, 0x1234), (PIO_W, 1, 0xE9, ord("x"))])

    def boom(ev: xi.XIOEvent, payload: bytes) -> None:
        raise RuntimeError("device model bug")

    r.intf.ioevent(0xA00, 2, PIO, signal=boom)
    with pytest.raises(xi.GuestIOError) as info:
        r.machine.run(timeout=30)
    err = info.value
    assert (err.space, err.addr, err.length, err.vcpu) == ("pio", 0xA00, 2, 0)
    assert isinstance(err.__cause__, RuntimeError)
    assert "port 0xa00" in str(err) and "device model bug" in str(err)
    assert r.console.getvalue() == b""  # the guest did not go on past the failed write


def test_machine_close_deassigns_events() -> None:
    m = xi.Machine(memory=1 << 20)
    intf = xi.bind(m)
    ev = intf.ioevent(0xB00, 1, PIO)
    m.close()
    assert intf.released
    assert len(m.pio_bus) == 0
    ev.deassign()
    with pytest.raises(xi.XInterfaceError):
        intf.ioevent(0xB00, 1, PIO)
