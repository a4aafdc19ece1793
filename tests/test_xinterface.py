"""The xinterface services on real VMs: bind, reference counts, copies, vmap, sgmap."""

from __future__ import annotations

import errno
import io
import os
import pickle
import struct
import threading
import time
from collections.abc import Iterator

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm

pytestmark = needs_kvm

# Two adjacent regions, a hole, then a third: every boundary kind in 1.1 MiB.
LAYOUT = [(0, 0x10000), (0x10000, 0x10000), (0x100000, 0x4000)]


@pytest.fixture
def machine() -> Iterator[xi.Machine]:
    with xi.Machine(memory=LAYOUT) as m:
        yield m


@pytest.fixture
def intf(machine: xi.Machine) -> xi.XInterface:
    return xi.bind(machine)


# --- bind -------------------------------------------------------------------------------------


def test_bind_machine_and_fd(machine: xi.Machine) -> None:
    a, b = xi.bind(machine), xi.bind(machine.fd)
    a.copy_to(0x100, b"via a")
    assert b.copy_from(0x100, 5) == b"via a"
    assert a.vm is b.vm is machine.vm


def test_bind_closed_fd_is_ebadf() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(fd)
    assert info.value.errno == errno.EBADF
    assert f"fd {fd}" in str(info.value)


def test_bind_fd_that_is_not_our_vm_is_einval() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(xi.XInterfaceError) as info:
            xi.bind(r)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("target", [True, "3", 1.5, None])
def test_bind_wrong_type_is_einval(target: object) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(target)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == "target"


def test_bind_closed_machine_is_ebadf() -> None:
    m = xi.Machine(memory=1 << 20)
    fd = m.fd
    m.close()
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(m)
    assert info.value.errno == errno.EBADF
    with pytest.raises(xi.XInterfaceError):
        xi.bind(fd)  # the fd number is closed (or reused by something that is not ours)


# --- reference counts -------------------------------------------------------------------------


def test_release_runs_once_on_last_put(intf: xi.XInterface) -> None:
    calls: list[int] = []
    original = intf.release

    def counting_release() -> None:
        calls.append(1)
        original()

    intf.release = counting_release  # type: ignore[method-assign]
    assert intf.get() is intf
    intf.get()
    intf.put()
    intf.put()
    assert calls == []
    intf.put()
    assert calls == [1]
    assert intf.released


@pytest.mark.parametrize(
    "use",
    [
        lambda i: i.copy_to(0, b"x"),
        lambda i: i.copy_from(0, 1),
        lambda i: i.vmap(0, 1),
        lambda i: i.sgmap([(0, 1)]),
        lambda i: i.get(),
        lambda i: i.put(),
    ],
)
def test_every_use_after_release_is_ebadf(intf: xi.XInterface, use: object) -> None:
    intf.put()
    with pytest.raises(xi.XInterfaceError) as info:
        use(intf)  # type: ignore[operator]
    assert info.value.errno == errno.EBADF


def test_context_manager_puts(machine: xi.Machine) -> None:
    with xi.bind(machine) as intf:
        intf.copy_to(0, b"a")
    assert intf.released


def test_a_map_keeps_its_interface_alive(intf: xi.XInterface) -> None:
    m = intf.vmap(0x2000, 8)
    intf.put()                  # the client's own reference
    assert not intf.released    # the map still holds one
    m.addr[:2] = b"ok"
    assert intf.copy_from(0x2000, 2) == b"ok"
    m.put()
    assert intf.released
    with pytest.raises(ValueError):
        m.addr[0]
    with pytest.raises(xi.XInterfaceError):
        m.put()


# --- copies -----------------------------------------------------------------------------------


def test_copies_span_adjacent_slots(intf: xi.XInterface) -> None:
    data = bytes(range(256)) * 64
    intf.copy_to(0x10000 - 0x1234, data)
    assert intf.copy_from(0x10000 - 0x1234, len(data)) == data


@pytest.mark.parametrize(("gpa", "length", "first_bad"),
                         [(0x1FFF0, 0x20, 0x20000), (0x20000, 1, 0x20000),
                          (0xFFFF8, 0x10, 0xFFFF8), (0x103FF0, 0x20, 0x104000)])
def test_copy_into_a_hole_copies_nothing(intf: xi.XInterface, gpa: int, length: int,
                                         first_bad: int) -> None:
    before = intf.vm.memory.read(0x1FF00, 0x100) if intf.vm.memory else b""
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_to(gpa, b"\xaa" * length)
    assert info.value.errno == errno.EFAULT
    assert f"gpa {first_bad:#x}" in str(info.value)
    assert intf.vm.memory is not None
    assert intf.vm.memory.read(0x1FF00, 0x100) == before
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_from(gpa, length)
    assert info.value.errno == errno.EFAULT


@pytest.mark.parametrize("args", [(-1, 4), (0, -4), (0, 1.5), (True, 1)])
def test_copy_from_bad_arguments(intf: xi.XInterface, args: tuple[object, object]) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_from(*args)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


# --- vmap and sgmap ---------------------------------------------------------------------------


def test_vmap_is_zero_copy_both_ways(intf: xi.XInterface) -> None:
    with intf.vmap(0x100100, 16) as m:
        assert (m.gpa, m.len, len(m.addr)) == (0x100100, 16, 16)
        m.addr[:5] = b"hello"
        assert intf.copy_from(0x100100, 5) == b"hello"
        intf.copy_to(0x100105, b"!")
        assert bytes(m.addr[:6]) == b"hello!"
    with pytest.raises(ValueError):
        bytes(m.addr)


def test_vmap_cast_moves_whole_items_and_goes_with_the_map(intf: xi.XInterface) -> None:
    m = intf.vmap(0x100100, 16)
    words = m.cast("H")
    words[1] = 0x0100
    assert intf.copy_from(0x100102, 2) == b"\x00\x01"
    intf.copy_to(0x100108, struct.pack("<I", 0xDEADBEEF))
    assert m.cast("I")[2] == 0xDEADBEEF
    m.put()
    with pytest.raises(ValueError):
        words[0]
    with pytest.raises(ValueError):
        m.cast("H")


def test_close_releases_live_casts() -> None:
    m = xi.Machine(memory=1 << 20)
    view = xi.bind(m).vmap(0x1000, 8).cast("Q")
    m.close()
    assert m.closed
    with pytest.raises(ValueError):
        view[0]


@pytest.mark.parametrize(("gpa", "length", "fmt"), [(0x100100, 16, "B"), (0x100100, 6, "I"),
                                                    (0x100101, 4, "H"), (0x100100, 8, "d")])
def test_vmap_cast_bad_format_is_einval(intf: xi.XInterface, gpa: int, length: int,
                                        fmt: str) -> None:
    with intf.vmap(gpa, length) as m, pytest.raises(xi.XInterfaceError) as info:
        m.cast(fmt)  # type: ignore[arg-type]
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "fmt")


def test_vmap_across_two_regions_is_efault(intf: xi.XInterface) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.vmap(0xFFF0, 0x20)
    assert info.value.errno == errno.EFAULT
    assert "spans two memory regions" in str(info.value)


@pytest.mark.parametrize("length", [0, -1])
def test_vmap_empty_is_einval(intf: xi.XInterface, length: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.vmap(0, length)
    assert info.value.argument == "length"


def test_sgmap_one_view_per_element(intf: xi.XInterface) -> None:
    elements = [(0x100, 4), (0x10000 - 2, 2), (0x10000, 2), (0x103FFC, 4)]
    with intf.sgmap(elements) as sg:
        assert len(sg) == 4
        assert sg.elements == elements
        for i, view in enumerate(sg):
            view[:] = bytes([0x30 + i]) * len(view)
        assert intf.copy_from(0xFFFE, 4) == b"1122"
        assert intf.copy_from(0x103FFC, 4) == b"3333"
    assert sg.released


def test_sgmap_bad_element_maps_nothing(intf: xi.XInterface) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.sgmap([(0x100, 4), (0x20000, 4)])
    assert info.value.errno == errno.EFAULT
    assert "element 1" in str(info.value)
    assert intf._maps == set()
    intf.put()
    assert intf.released  # no reference was leaked by the failed map


@pytest.mark.parametrize("elements", [[], [(0, 1, 2)], [5]])
def test_sgmap_malformed_is_einval(intf: xi.XInterface, elements: list[object]) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        intf.sgmap(elements)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


# --- Machine.close with live clients ----------------------------------------------------------


def test_close_tears_down_clients() -> None:
    m = xi.Machine(memory=1 << 20)
    intf = xi.bind(m)
    vm, sg = intf.vmap(0, 8), intf.sgmap([(8, 8)])
    m.close()
    assert intf.released and vm.released and sg.released
    with pytest.raises(ValueError):
        vm.addr[0]
    with pytest.raises(xi.XInterfaceError) as info:
        intf.copy_from(0, 1)
    assert info.value.errno == errno.EBADF


def test_close_with_an_exported_map_raises_buffer_error_then_retries() -> None:
    m = xi.Machine(memory=1 << 20)
    intf = xi.bind(m)
    vm = intf.vmap(0x3000, 64)
    export = pickle.PickleBuffer(vm.addr)  # holds a buffer export, as a NumPy array would
    with pytest.raises(BufferError) as info:
        m.close()
    assert "XVMap(gpa=0x3000, len=0x40)" in str(info.value)
    assert not m.closed
    export.release()
    m.close()
    assert m.closed and vm.released


# --- with a running guest ---------------------------------------------------------------------


def test_guest_writes_are_seen_and_host_writes_reach_the_guest(guest: Assemble) -> None:
    counter, flag, mark = 0x8000, 0x8004, 0x8008
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("count_until_flag", COUNTER=counter, FLAG=flag, MARK=mark),
                    gpa=0x1000, mode="protected")
        intf = xi.bind(m)
        view = intf.vmap(counter, 4)
        seen: list[int] = []

        def host() -> None:
            deadline = time.monotonic() + 20
            while len(seen) < 5 and time.monotonic() < deadline:
                value = struct.unpack("<I", intf.copy_from(counter, 4))[0]
                if not seen or value > seen[-1]:
                    seen.append(value)
                time.sleep(0.01)
            intf.copy_to(flag, b"\1\0\0\0")

        worker = threading.Thread(target=host)
        worker.start()
        result = m.run(timeout=30)
        worker.join()
        assert result.reason == "hlt"
        assert len(seen) == 5 and seen == sorted(seen)   # the counter moved while we read it
        assert intf.copy_from(mark, 4) == b"done"
        assert struct.unpack("<I", view.addr)[0] >= seen[-1]
        view.put()


def test_guest_reads_what_copy_to_wrote(guest: Assemble) -> None:
    out = io.BytesIO()
    with xi.Machine(memory=LAYOUT, console=out) as m:
        m.load_flat(guest("print_at", PTR=0x10000 - 3), gpa=0x1000, mode="protected")
        with xi.bind(m) as intf:
            intf.copy_to(0x10000 - 3, b"across slots\0")
        assert m.run(timeout=10).reason == "hlt"
    assert out.getvalue() == b"across slots"


def test_release_hooks_run_while_maps_and_irqfds_are_still_valid() -> None:
    """Closing the machine runs the interface's release hooks first (they stop device
    threads), then deassigns its entries and releases its maps."""
    m = xi.Machine(memory=2 << 20, irqchip=True)
    intf = xi.bind(m)
    view = intf.vmap(0x1000, 16)
    irqfd = intf.irqfd(5)
    seen: list[str] = []

    def hook() -> None:
        view.addr[0:4] = b"hook"          # raises ValueError on a released view
        irqfd.trigger()                    # EBADF on a deassigned irqfd
        seen.append(bytes(view.addr[0:4]).decode())

    intf.on_release(hook)
    m.close()
    assert seen == ["hook"]
    assert view.released and irqfd.fd < 0 and intf.released


def test_a_release_hook_that_raises_does_not_skip_the_teardown() -> None:
    m = xi.Machine(memory=2 << 20)
    intf = xi.bind(m)
    view = intf.vmap(0x1000, 16)
    ran: list[int] = []
    intf.on_release(lambda: ran.append(1))

    def broken() -> None:
        raise RuntimeError("a hook's bug")

    intf.on_release(broken)
    with pytest.raises(RuntimeError, match="a hook's bug"):
        m.close()
    assert ran == [1]                      # the older hook still ran
    assert view.released and intf.released and m.closed
