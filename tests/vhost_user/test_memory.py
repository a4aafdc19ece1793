"""The frontend's memory table as an xinterface: translation, and the bound checks of
copy_to/copy_from/vmap/sgmap, run by the same code as on a local VM."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator

import pytest

from xinterface.errors import XInterfaceError
from xinterface.interface import Host
from xinterface.vhost_user.interface import MemoryHost, SessionInterface
from xinterface.vhost_user.memory import MemoryTable
from xinterface.vhost_user.protocol import Region
from xinterface.xioevent import XIOEventFlags

USER = 0x7F12_3400_0000
PAGE = 4096


@pytest.fixture
def intf() -> Iterator[SessionInterface]:
    """Guest memory [0, 8 KiB) and [8 KiB, 12 KiB) from one memfd, and [1 MiB, +4 KiB) from
    another; a hole between."""
    a = os.memfd_create("a", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    b = os.memfd_create("b", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(a, 4 * PAGE)
    os.ftruncate(b, PAGE)
    host = MemoryHost()
    host.memory = MemoryTable([Region(0, 2 * PAGE, USER, 0),
                               Region(2 * PAGE, PAGE, USER + 0x10000, 3 * PAGE),
                               Region(1 << 20, PAGE, USER + 0x20000, 0)], [a, os.dup(a), b])
    intf = SessionInterface(host)
    yield intf
    intf.put()
    host.memory.close()


def test_frontend_addresses_translate_through_user_addr(intf: SessionInterface) -> None:
    table = intf.host.memory
    assert isinstance(table, MemoryTable)
    assert table.gpa_of(USER + 0x10, 16) == 0x10
    assert table.gpa_of(USER + 0x10000 + 8, 8) == 2 * PAGE + 8
    assert table.gpa_of(USER + 0x20000, PAGE) == 1 << 20
    for addr, length in [(USER + 2 * PAGE - 8, 16), (USER - 1, 1), (USER + 0x30000, 1)]:
        with pytest.raises(XInterfaceError) as exc:
            table.gpa_of(addr, length)
        assert exc.value.errno == errno.EFAULT


def test_regions_map_their_file_at_the_mmap_offset(intf: SessionInterface) -> None:
    intf.copy_to(0, b"start")
    intf.copy_to(2 * PAGE, b"third page of a")   # offset 3 pages in the first memfd
    assert intf.copy_from(2 * PAGE, 15) == b"third page of a"
    # Adjacent regions are crossed by a copy, as in a VM's RAM.
    intf.copy_to(2 * PAGE - 2, b"abcd")
    assert intf.copy_from(2 * PAGE - 2, 4) == b"abcd"


def test_accesses_outside_every_region_are_efault_and_all_or_nothing(
        intf: SessionInterface) -> None:
    intf.copy_to(3 * PAGE - 4, b"keep")
    for call in (lambda: intf.copy_to(3 * PAGE - 4, b"overflows!"),
                 lambda: intf.copy_from(3 * PAGE - 4, 8),
                 lambda: intf.vmap(3 * PAGE - 4, 8),
                 lambda: intf.vmap(2 * PAGE - 4, 8),          # two regions: one view maps one
                 lambda: intf.sgmap([(0, 16), (1 << 20, PAGE + 1)]),
                 lambda: intf.copy_from((1 << 64) - 1, 2)):
        with pytest.raises(XInterfaceError) as exc:
            call()
        assert exc.value.errno == errno.EFAULT
    assert intf.copy_from(3 * PAGE - 4, 4) == b"keep"
    with intf.vmap(1 << 20, PAGE) as m:
        m.addr[:4] = b"view"
    assert intf.copy_from(1 << 20, 4) == b"view"


def test_the_buses_are_the_frontends(intf: SessionInterface) -> None:
    for call, argument in ((lambda: intf.ioevent(0x10, 2, XIOEventFlags.PIO), "addr"),
                           (lambda: intf.iorange(0x1000, 16), "addr"),
                           (lambda: intf.irqfd(5), "gsi"),
                           (lambda: intf.set_irq(5, True), "gsi"),
                           (lambda: intf.vm, "vm")):
        with pytest.raises(XInterfaceError) as exc:
            call()
        assert exc.value.errno == errno.EOPNOTSUPP
        assert exc.value.argument == argument


def test_the_session_host_is_a_host_that_ends_no_run(intf: SessionInterface) -> None:
    """The Host protocol, met without a cast: memory, irqchip, run_control, clients."""
    host: Host = intf.host
    assert host.memory is not None and host.irqchip is False
    host.run_control.exit(3)   # nothing runs here: a device that ends a run ends nothing
    host.run_control.request_reset()
    intf.copy_to(0, b"still served")
    assert intf.copy_from(0, 12) == b"still served"


def test_no_memory_table_yet_is_efault() -> None:
    intf = SessionInterface(MemoryHost())
    with pytest.raises(XInterfaceError) as exc:
        intf.copy_from(0, 1)
    assert exc.value.errno == errno.EFAULT
    intf.put()


def _memfd(flags: int = os.MFD_ALLOW_SEALING) -> int:
    fd = os.memfd_create("seal", os.MFD_CLOEXEC | flags)
    os.ftruncate(fd, 2 * PAGE)
    return fd


def test_a_sealable_file_is_sealed_against_shrinking_before_it_is_mapped() -> None:
    fd = _memfd()
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == 0
    table = MemoryTable([Region(0, 2 * PAGE, USER, 0)], [os.dup(fd)])
    try:
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):   # the frontend's truncation now fails
            os.ftruncate(fd, PAGE)
        os.ftruncate(fd, 4 * PAGE)             # growing stays allowed: nothing maps past it
        table.regions[0].view[-1] = 7          # the mapped pages are all still there
    finally:
        table.close()
        os.close(fd)


def test_a_file_that_can_shrink_and_cannot_be_sealed_is_refused() -> None:
    fd = _memfd(flags=0)                       # no MFD_ALLOW_SEALING: F_SEAL_SEAL from birth
    with pytest.raises(XInterfaceError) as exc:
        MemoryTable([Region(0, 2 * PAGE, USER, 0)], [os.dup(fd)])
    assert exc.value.errno == errno.EINVAL and "could shrink" in str(exc.value)
    os.ftruncate(fd, PAGE)                     # nothing of ours maps it
    os.close(fd)


def test_a_file_sealed_by_its_owner_is_taken_as_it_is() -> None:
    fd = _memfd()
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                | fcntl.F_SEAL_SEAL)           # QEMU's memory-backend-memfd, seal=on
    table = MemoryTable([Region(0, 2 * PAGE, USER, 0)], [os.dup(fd)])
    table.close()
    os.close(fd)
