"""Property tests: random gpa/length against a model of the guest's memory map.

The model is one bytearray per region; every operation must either succeed exactly as the
model says (all bytes in RAM, one region for a view) or fail with the model's errno and
change nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xinterface as xi
from tests.conftest import needs_kvm

pytestmark = needs_kvm

LAYOUT = [(0, 0x4000), (0x4000, 0x2000), (0x10000, 0x1000), (0x20000, 0x3000)]
EDGES = sorted({e for g, s in LAYOUT for e in (g, g + s)})


class Model:
    def __init__(self) -> None:
        self.regions = {g: bytearray(s) for g, s in LAYOUT}

    def region(self, gpa: int) -> int | None:
        for g, s in LAYOUT:
            if g <= gpa < g + s:
                return g
        return None

    def in_ram(self, gpa: int, length: int) -> bool:
        return all(self.region(a) is not None for a in (gpa, gpa + length - 1)) and all(
            self.region(e) is not None for e in EDGES if gpa < e < gpa + length)

    def one_region(self, gpa: int, length: int) -> bool:
        first = self.region(gpa)
        return first is not None and first == self.region(gpa + length - 1)

    def read(self, gpa: int, length: int) -> bytes:
        out = bytearray()
        for a in range(gpa, gpa + length):
            g = self.region(a)
            assert g is not None
            out.append(self.regions[g][a - g])
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        for i, b in enumerate(data):
            g = self.region(gpa + i)
            assert g is not None
            self.regions[g][gpa + i - g] = b


@pytest.fixture(scope="module")
def bound() -> Iterator[tuple[xi.XInterface, Model]]:
    with xi.Machine(memory=LAYOUT) as m:
        yield xi.bind(m), Model()


# Addresses near every boundary, plus anywhere.
near_edge = st.builds(lambda e, d: max(0, e + d), st.sampled_from(EDGES), st.integers(-64, 64))
gpas = st.one_of(near_edge, st.integers(0, 0x30000))
lengths = st.one_of(st.integers(1, 128), st.integers(1, 0x5000))

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(gpa=gpas, length=lengths, seed=st.integers(0, 255))
def test_copy_to_then_from_matches_the_model(bound: tuple[xi.XInterface, Model], gpa: int,
                                             length: int, seed: int) -> None:
    intf, model = bound
    data = bytes((seed + i) & 0xFF for i in range(length))
    if model.in_ram(gpa, length):
        intf.copy_to(gpa, data)
        model.write(gpa, data)
        assert intf.copy_from(gpa, length) == model.read(gpa, length)
    else:
        with pytest.raises(xi.XInterfaceError) as info:
            intf.copy_to(gpa, data)
        assert info.value.errno == errno.EFAULT
        with pytest.raises(xi.XInterfaceError):
            intf.copy_from(gpa, length)
    # Nothing outside the accepted writes changed anywhere.
    for g, s in LAYOUT:
        assert intf.copy_from(g, s) == bytes(model.regions[g])


@FAST
@given(gpa=gpas, length=lengths)
def test_vmap_exactly_when_in_one_region(bound: tuple[xi.XInterface, Model], gpa: int,
                                         length: int) -> None:
    intf, model = bound
    if model.one_region(gpa, length):
        with intf.vmap(gpa, length) as m:
            assert bytes(m.addr) == model.read(gpa, length)
            m.addr[0] ^= 0xFF
            model.write(gpa, bytes([model.read(gpa, 1)[0] ^ 0xFF]))
        assert intf.copy_from(gpa, 1) == model.read(gpa, 1)
    else:
        with pytest.raises(xi.XInterfaceError) as info:
            intf.vmap(gpa, length)
        assert info.value.errno == errno.EFAULT
    assert intf._maps == set()


@FAST
@given(elements=st.lists(st.tuples(gpas, st.integers(1, 256)), min_size=1, max_size=6))
def test_sgmap_all_or_nothing(bound: tuple[xi.XInterface, Model],
                              elements: list[tuple[int, int]]) -> None:
    intf, model = bound
    if all(model.one_region(g, n) for g, n in elements):
        with intf.sgmap(elements) as sg:
            for (g, n), view in zip(sg.elements, sg, strict=True):
                assert len(view) == n
                assert bytes(view) == model.read(g, n)
    else:
        with pytest.raises(xi.XInterfaceError) as info:
            intf.sgmap(elements)
        assert info.value.errno == errno.EFAULT
    assert intf._maps == set()
