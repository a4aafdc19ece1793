"""Property tests: ioevent arguments against the seed's rules, and random guest accesses."""

from __future__ import annotations

import errno
import io
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xinterface as xi
from tests.conftest import Assemble, needs_kvm

pytestmark = needs_kvm

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def intf() -> Iterator[xi.XInterface]:
    with xi.Machine(memory=1 << 20, debug_ports=False) as m:
        yield xi.bind(m)


def expected_errno(addr: int, length: int, flags: int) -> int | None:
    """The seed's checks (plus a bus-size check for PIO), in the seed's spirit."""
    if flags < 0 or flags & ~xi.KVM_XIOEVENT_VALID_FLAG_MASK:
        return errno.EINVAL
    limit = 1 << 16 if flags & 1 else 1 << 64
    if addr < 0 or addr >= limit:
        return errno.EINVAL
    if length not in (1, 2, 4, 8):
        return errno.EINVAL
    if not flags & 1 and addr + length >= 1 << 64:  # the seed: addr + len < addr, in u64
        return errno.EINVAL
    return None


@SETTINGS
@given(
    addr=st.one_of(st.integers(-2, 0x10002), st.integers(2**64 - 10, 2**64 + 2),
                   st.integers(0, 2**64)),
    length=st.integers(-1, 9),
    flags=st.one_of(st.sampled_from([0, 1]), st.integers(-2, 2**32)),
)
def test_ioevent_arguments(intf: xi.XInterface, addr: int, length: int, flags: int) -> None:
    buses = intf.vm.pio_bus, intf.vm.mmio_bus
    before = [len(b) for b in buses]
    want = expected_errno(addr, length, flags)
    if want is None:
        ev = intf.ioevent(addr, length, flags)
        assert [len(b) for b in buses] != before
        ev.deassign()
    else:
        with pytest.raises(xi.XInterfaceError) as info:
            intf.ioevent(addr, length, flags)
        assert info.value.errno == want
        assert info.value.argument in ("addr", "length", "flags")
    assert [len(b) for b in buses] == before  # nothing half-registered, nothing left behind
    assert not intf.released


# Random guest accesses: any port, any MMIO address outside RAM below 4 GiB (the loader maps
# that much), any size, reads and writes. The VMM must neither crash nor hang.
RAM = 4 << 20
TABLE = 0x100000
access = st.one_of(
    st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 2, 4]),
              st.integers(0, 0xFFFF).filter(lambda p: p != 0xF4), st.integers(0, 2**32 - 1)),
    st.tuples(st.sampled_from([2, 4]), st.sampled_from([1, 2, 4, 8]),
              st.integers(RAM, (1 << 32) - 8), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(accesses=st.lists(access, min_size=1, max_size=300))
def test_random_guest_accesses_never_hurt_the_vmm(guest: Assemble,
                                                  accesses: list[tuple[int, int, int, int]]
                                                  ) -> None:
    entries = [struct.pack("<BB6xQQ", k, n, a, v & ((1 << 8 * n) - 1)) for k, n, a, v in accesses]
    console = io.BytesIO()
    with xi.Machine(memory=RAM, console=console) as m:
        m.load_flat(guest("replay", mode="long", TABLE=TABLE), gpa=0x1000, mode="long")
        intf = xi.bind(m)
        intf.copy_to(TABLE, b"".join(entries) + bytes(24))
        result = m.run(timeout=60)
        assert result.reason == "hlt"
        expected = sum(n for k, n, a, _ in accesses if k == 1 and a == 0xE9)
        assert len(console.getvalue()) == expected
