"""The bus owns the dispatch rule: what every path (a sync exit, a POSTED entry, a wrapped
bus) does with a guest write, on whichever loop runs (the suite runs on both).

Guests replay tables of accesses (tests/guests/replay.S) on a real vCPU.
"""

from __future__ import annotations

import io
import struct

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.grace import Grace
from xinterface.iobus import IoBus, RangeDevice, Routes
from xinterface.kvm.exits import Space

PIO = xi.XIOEventFlags.PIO
TABLE = 0x100000
PIO_W = 1
MMIO_BASE = 0xD0000000


def _replay(m: xi.Machine, guest: Assemble, accesses: list[tuple[int, int, int, int]]) -> None:
    m.load_flat(guest("replay", mode="long", TABLE=TABLE), mode="long")
    xi.bind(m).copy_to(TABLE, b"".join(struct.pack("<BB6xQQ", *a) for a in accesses)
                       + bytes(24))


def test_routes_is_one_snapshot_replaced_whole() -> None:
    bus = IoBus(Space.PIO, 1 << 16, Grace())
    before = bus.routes
    assert isinstance(before, Routes) and before == Routes(bus.events, (), ())
    device = RangeDevice(0x100, 0x10, None, None, "d")
    bus.add_range(device)
    after = bus.routes
    # A reader holding the old snapshot keeps a consistent (empty) one; the event table is
    # the bus's own dict, shared by every snapshot.
    assert before.starts == () and before.devices == ()
    assert after.starts == (0x100,) and after.devices == (device,)
    assert after.events is before.events is bus.events
    bus.remove_range(device)
    assert bus.routes.devices == () and after.devices == (device,)
    assert bus.space is Space.PIO and IoBus("mmio", 1 << 64, Grace()).space is Space.MMIO


@needs_kvm
def test_a_declining_device_is_asked_once_then_strict_refuses(guest: Assemble) -> None:
    calls: list[tuple[int, bytes]] = []

    def decline(offset: int, payload: bytes) -> bool:
        calls.append((offset, payload))
        return False

    with xi.Machine(memory=4 << 20) as m:
        _replay(m, guest, [(PIO_W, 2, 0x592, 0x1234)])
        xi.bind(m).iorange(0x590, 4, PIO, write=decline)
        m.strict = True
        with pytest.raises(xi.GuestIOError) as info:
            m.run(timeout=60)
    assert calls == [(2, b"\x34\x12")]
    assert (info.value.space, info.value.addr, info.value.length) == ("pio", 0x592, 2)


@needs_kvm
def test_a_posted_entry_nobody_claims_goes_to_the_unhandled_policy_once(
        guest: Assemble) -> None:
    # A 1-byte write inside a 4-byte POSTED zone is logged (virt/kvm/coalesced_mmio.c) but
    # matches no event; the range device beneath declines it; strict mode then refuses it.
    calls: list[tuple[int, bytes]] = []

    def decline(offset: int, payload: bytes) -> bool:
        calls.append((offset, payload))
        return False

    events: list[bytes] = []
    with xi.Machine(memory=4 << 20) as m:
        _replay(m, guest, [(PIO_W, 4, 0x580, 0x11111111), (PIO_W, 1, 0x583, 0x22)])
        intf = xi.bind(m)
        intf.ioevent(0x580, 4, PIO, delivery=xi.Delivery.POSTED,
                     signal=lambda ev, p: events.append(p))
        intf.iorange(0x580, 4, PIO, write=decline)
        m.strict = True
        with pytest.raises(xi.GuestIOError) as info:
            m.run(timeout=60)
            m.flush()
    assert events == [b"\x11" * 4]
    assert calls == [(3, b"\x22")]
    assert "unhandled posted 1-byte write to port 0x583" in str(info.value)
    assert (info.value.space, info.value.addr, info.value.length) == ("pio", 0x583, 1)


@needs_kvm
def test_a_wrapped_bus_sees_every_write_even_those_an_event_takes(guest: Assemble) -> None:
    # --trace wraps the buses; a wrapper has no routes, so the compiled loop must call it.
    out = io.StringIO()
    got: list[bytes] = []
    with xi.Machine(memory=4 << 20, trace=out) as m:
        _replay(m, guest, [(PIO_W, 1, 0x5A0, 0x42), (2, 4, MMIO_BASE + 4, 0xAABBCCDD),
                           (PIO_W, 2, 0x5B0, 0x0102)])
        intf = xi.bind(m)
        intf.ioevent(0x5A0, 1, PIO, signal=lambda ev, p: got.append(p))
        assert m.run(timeout=60).reason == "hlt"
    assert got == [b"\x42"]
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines if "write" in line] == [
        ["pio", "write", "0x05a0"], ["mmio", "write", "0xd0000004"], ["pio", "write", "0x05b0"]]
    assert "claimed" in lines[0] and lines[1].endswith("unhandled")
