"""Bad API input is XInterfaceError with the errno and the argument named.

docs/guarantees.md; each test reproduced a defect before its fix."""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from typing import Any

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.guarantees.helpers import (
    EVENTFD,
    PIO,
    POSTED,
    ROM_SIZE,
    SYNC,
)

pytestmark = needs_kvm


# --- bad API input is XInterfaceError ------------------------------------------------------------


@pytest.mark.parametrize("data", ["text", None, 5, [1, 2], 3.5])
def test_copy_to_non_bytes_is_einval(intf: xi.XInterface, data: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_to(0x1000, data)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "data")


@pytest.mark.parametrize("elements", [None, 5, "ab", b"ab"])
def test_sgmap_non_sequence_is_einval(intf: xi.XInterface, elements: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.sgmap(elements)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "elements")


@pytest.mark.parametrize(("name", "bad"), [("read", 5), ("write", "x")])
def test_iorange_non_callable_is_einval(intf: xi.XInterface, name: str, bad: object) -> None:
    published = len(intf.vm.pio_bus)  # the debug ports
    with pytest.raises(xi.XInterfaceError) as info:
        intf.iorange(0x600, 4, PIO, **{name: bad})  # type: ignore[arg-type]
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, name)
    assert len(intf.vm.pio_bus) == published


@pytest.mark.parametrize("delivery", [SYNC, POSTED, EVENTFD])
def test_mmio_event_ending_at_2_64_is_einval_in_every_mode(intf: xi.XInterface,
                                                           delivery: xi.Delivery) -> None:
    # The seed refuses addr + len < addr in 64-bit arithmetic, so [2**64 - 8, 2**64) wraps;
    # the kernel's ioeventfd refuses it the same way.
    with pytest.raises(xi.XInterfaceError) as info:
        intf.ioevent(2**64 - 8, 8, delivery=delivery)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "addr")
    intf.ioevent(2**64 - 16, 8, delivery=delivery).deassign()


@pytest.mark.parametrize("memory", [[(0, 4096.7)], [(0.0, 4096)], "64M", [(0,)], [(0, 4096, 1)],
                                    [None], 4096.0])
def test_memory_layout_must_be_ints(memory: Any) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=memory)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "memory")


@pytest.mark.parametrize("target", [2**31, 2**63, -1])
def test_bind_out_of_range_fd_is_ebadf(target: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(target)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(("call", "argument"), [
    (lambda m: m.load_flat(None), "image"),
    (lambda m: m.load_flat("text"), "image"),
    (lambda m: m.load_firmware(None), "firmware"),
    (lambda m: m.load_firmware(5), "firmware"),
    (lambda m: m.run(timeout="1"), "timeout"),
    (lambda m: m.run(timeout=-1), "timeout"),
    (lambda m: m.run(timeout=1, poll="x"), "poll"),
    (lambda m: m.run(timeout=1, poll=0), "poll"),
])
def test_machine_bad_arguments_are_einval(call: Callable[[xi.Machine], object],
                                          argument: str) -> None:
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        call(m)
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, argument)


def test_load_flat_real_or_protected_after_a_long_mode_run(guest: Assemble) -> None:
    out = io.BytesIO()
    with xi.Machine(memory=4 << 20, console=out) as m:
        for mode, bits in [("long", 64), ("real", 16), ("long", 64), ("protected", 32)]:
            m.load_flat(guest("hello", mode=mode, MODE=bits), mode=mode)
            assert m.run(timeout=10).reason == "hlt"
            sregs = m.vcpus[0].vcpu.get_sregs()
            assert bool(sregs.efer & 0x400) == (mode == "long")  # EFER.LMA: long mode active
    assert out.getvalue() == b"hi4hi1hi4hi2"


def test_refused_load_firmware_maps_nothing() -> None:
    # RAM where the ROM goes (just below 4 GiB): refused before anything is mapped, so the
    # same call gives the same error again (it used to leave the ROM mapped: EEXIST).
    layout = [(0, 1 << 20), ((1 << 32) - (64 << 10), 64 << 10)]
    with xi.Machine(memory=layout) as m:
        assert m.memory is not None
        before = [(r.gpa, r.size, r.readonly) for r in m.memory.regions]
        for _ in range(2):
            with pytest.raises(xi.XInterfaceError) as info:
                m.load_firmware(b"\0" * ROM_SIZE)
            assert (info.value.errno, info.value.argument) == (errno.EINVAL, "firmware")
        assert [(r.gpa, r.size, r.readonly) for r in m.memory.regions] == before
    # RAM ending inside the alias: the alias takes its place.
    with xi.Machine(memory=[(0, 0xF8000), (0x100000, 0x100000)]) as m:
        m.load_firmware(b"\xa5" * ROM_SIZE)
        assert xi.bind(m).copy_from(0xE0000, 4) == b"\xa5" * 4
