"""The virtio-blk benchmarks' guests run to a clean end (every request OK) on every VMM and
device they are timed on. What these check is the guest's good status (a failed request, a
missing device or a refused feature ends it with another, which raises), not a time: under
QEMU the marks are timed where QEMU's chardev delivers them, and for a few requests both can
arrive in one read, so a span may be 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface.bench import blk_backends, vhost_user_blk, virtio_blk
from xinterface.bench.peer import QEMU
from xinterface.delivery import Delivery

pytestmark = needs_kvm

needs_qemu = pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} not installed")
needs_qsd = pytest.mark.skipif(shutil.which(blk_backends.STORAGE_DAEMON) is None,
                               reason=f"{blk_backends.STORAGE_DAEMON} not installed")


@pytest.mark.parametrize("doorbells", [Delivery.SYNC, Delivery.EVENTFD, Delivery.POSTED])
def test_guest_completes_every_request_on_xinterface(tmp_path: Path, doorbells: Delivery) -> None:
    assert virtio_blk._own_seconds(4, 3, tmp_path / "disk.img", doorbells) > 0


@needs_qemu
def test_guest_completes_every_request_on_qemu(tmp_path: Path) -> None:
    assert virtio_blk._qemu_seconds(4, 3, tmp_path / "disk.img") >= 0


# The modern virtio-pci guest, both ways round (bench/vhost_user_blk.py): under QEMU on its
# own virtio-blk-pci and on vhost-user-blk-pci over each backend; on our pc board with the
# in-process disk and with `--disk vhost-user=` over each backend.
COMBINATIONS = [
    pytest.param("qemu", "builtin", marks=needs_qemu),
    pytest.param("qemu", "qsd", marks=[needs_qemu, needs_qsd]),
    pytest.param("qemu", "serve", marks=needs_qemu),
    pytest.param("xinterface", "builtin"),
    pytest.param("xinterface", "qsd", marks=needs_qsd),
    pytest.param("xinterface", "serve"),
]


@pytest.mark.parametrize(("vmm", "device"), COMBINATIONS)
def test_modern_guest_completes_every_request(vmm: str, device: str) -> None:
    assert vhost_user_blk.seconds(4, 3, vmm, device) >= 0


def test_modern_guest_completes_with_eventfd_doorbells_on_xinterface() -> None:
    assert vhost_user_blk.seconds(4, 3, "xinterface", "builtin",
                                  doorbells=Delivery.EVENTFD) > 0


def test_modern_guest_fails_without_a_virtio_blk(tmp_path: Path) -> None:
    """The status is the guest's: with no virtio-blk on the bus it ends with 7, not 1 (so
    the good status the tests above see is earned)."""
    from typing import BinaryIO, cast

    from xinterface.bench.marks import Marks
    from xinterface.boards.pc import attach_pc
    from xinterface.runner.machine import Machine

    marks = Marks()
    with Machine(memory=blk_backends.MEMORY_MIB << 20, console=cast(BinaryIO, marks)) as m:
        attach_pc(m)
        m.load_flat(blk_backends.guest(4, 3), gpa=0x7C00, mode="protected")
        m.set_entry(blk_backends.ENTRY)
        result = m.run(timeout=60)
    assert (result.reason, result.exit_code) == ("exit", 7)
    assert bytes(marks.text) == b"?"


def test_qemu_command_takes_a_disk_or_a_socket(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        blk_backends.qemu_command()
    with pytest.raises(ValueError):
        blk_backends.qemu_command(disk=tmp_path / "d", socket=tmp_path / "s")
    for command in (blk_backends.qemu_command(disk=tmp_path / "d"),
                    blk_backends.qemu_command(socket=tmp_path / "s")):
        device = next(a for a in command if a.startswith(("virtio-blk-pci", "vhost-user-blk")))
        assert "disable-legacy=on" in device and "queue-size=256" in device


def test_unknown_vmm_or_device_is_refused() -> None:
    with pytest.raises(ValueError):
        vhost_user_blk.seconds(1, 1, "firecracker", "builtin")
    with pytest.raises(ValueError):
        vhost_user_blk.seconds(1, 1, "qemu", "nbd")


def test_suite_pairs_each_vhost_user_row_with_qemu_on_qemu_storage_daemon() -> None:
    """`xinterface bench --peer vhost-user` registers the six rows at both depths, each of
    ours with QEMU on qemu-storage-daemon as its ratio's reference (nothing is measured)."""
    from xinterface.bench.suite import figures

    figs, notices = figures(True, peers=("vhost-user",))
    floors = {f.name: f.floor for f in figs if f.name.startswith("vhost_user.")}
    if shutil.which(QEMU) is None or shutil.which(blk_backends.STORAGE_DAEMON) is None:
        assert any("skipped" in notice for notice in notices)
        return
    for depth in (1, 32):
        qsd = f"vhost_user.qemu.qd{depth}.qsd"
        assert floors[f"vhost_user.qemu.qd{depth}.builtin"] is None
        assert floors[qsd] == f"vhost_user.qemu.qd{depth}.builtin"
        for row in ("qemu.qd{}.serve", "xinterface.qd{}.builtin", "xinterface.qd{}.serve",
                    "xinterface.qd{}.qsd"):
            assert floors["vhost_user." + row.format(depth)] == qsd
    assert len(floors) == 12
