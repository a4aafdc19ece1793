"""Guest memory: slots, layout, gpa translation and its bounds, on a real VM."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.memory import GiB, GuestMemory, default_layout, layout_from

pytestmark = needs_kvm


@pytest.fixture
def machine() -> Iterator[xi.Machine]:
    with xi.Machine(memory=[(0, 64 << 10), (64 << 10, 64 << 10), (1 << 20, 16 << 10)]) as m:
        yield m


def mem(m: xi.Machine) -> GuestMemory:
    assert m.memory is not None
    return m.memory


def test_default_layout_leaves_the_pci_hole() -> None:
    assert default_layout(64 << 20) == [(0, 64 << 20)]
    assert default_layout(3 * GiB) == [(0, 3 * GiB)]
    assert default_layout(5 * GiB) == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]


def test_regions_are_slots_in_gpa_order(machine: xi.Machine) -> None:
    regions = mem(machine).regions
    assert [(r.gpa, r.size) for r in regions] == [(0, 0x10000), (0x10000, 0x10000),
                                                   (0x100000, 0x4000)]
    assert len({r.slot for r in regions}) == 3
    assert mem(machine).size == 0x24000


def test_read_write_cross_adjacent_regions(machine: xi.Machine) -> None:
    m = mem(machine)
    m.write(0xFFFE, b"abcd")
    assert m.read(0xFFFE, 4) == b"abcd"
    assert bytes(m.regions[0].view[-2:]) == b"ab"
    assert bytes(m.regions[1].view[:2]) == b"cd"


@pytest.mark.parametrize(
    ("gpa", "length", "bad"),
    [
        (0x20000, 1, 0x20000),           # the hole after the second region
        (0x1FFFF, 2, 0x20000),           # last byte of RAM plus one
        (0x103FFF, 2, 0x104000),         # end of the last region
        (0xFFFFF, 1, 0xFFFFF),           # just below the third region
        (-1, 1, -1),
    ],
)
def test_translation_outside_ram_is_efault(machine: xi.Machine, gpa: int, length: int,
                                           bad: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        mem(machine).spans(gpa, length)
    assert info.value.errno == errno.EFAULT
    assert f"gpa {bad:#x}" in str(info.value)


def test_write_outside_ram_changes_nothing(machine: xi.Machine) -> None:
    m = mem(machine)
    m.write(0x1FFF0, b"\x11" * 16)
    with pytest.raises(xi.XInterfaceError):
        m.write(0x1FFF0, b"\x22" * 17)
    assert m.read(0x1FFF0, 16) == b"\x11" * 16


def test_view_is_zero_copy_and_refuses_two_regions(machine: xi.Machine) -> None:
    m = mem(machine)
    view = m.view(0x100010, 4)
    view[:] = b"wxyz"
    assert m.read(0x100010, 4) == b"wxyz"
    view.release()
    with pytest.raises(xi.XInterfaceError) as info:
        m.view(0xFFFF, 2)
    assert info.value.errno == errno.EFAULT


@pytest.mark.parametrize(
    "layout",
    [[(0, 0x1000), (0x800, 0x1000)], [(0x10, 0x1000)], [(0, 0x1800)], []],
)
def test_bad_layouts_are_refused(layout: list[tuple[int, int]]) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=layout)
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == "memory"


def test_layout_from_rejects_bool() -> None:
    with pytest.raises(xi.XInterfaceError):
        layout_from(True)


def test_guest_sees_what_the_host_wrote(guest: Assemble) -> None:
    # The guest prints the string at 0x10000 (in the second region) that the host put there.
    import io

    out = io.BytesIO()
    with xi.Machine(memory=[(0, 0x10000), (0x10000, 0x10000)], console=out) as m:
        m.load_flat(guest("print_at", PTR=0x10000), gpa=0x1000, mode="protected")
        assert m.memory is not None
        m.memory.write(0x10000, b"from the host\0")
        assert m.run(timeout=10).reason == "hlt"
    assert out.getvalue() == b"from the host"
