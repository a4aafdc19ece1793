"""The virtio-blk benchmark's guest runs to a clean end on both VMMs (every request OK), and
its marks time the rounds on each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface.bench import vhost_user_blk, virtio_blk
from xinterface.delivery import Delivery

pytestmark = needs_kvm


@pytest.mark.parametrize("doorbells", [Delivery.SYNC, Delivery.EVENTFD, Delivery.POSTED])
def test_guest_completes_every_request_on_xinterface(tmp_path: Path, doorbells: Delivery) -> None:
    assert virtio_blk._own_seconds(4, 3, tmp_path / "disk.img", doorbells) > 0


# Under QEMU the marks are timed where they arrive, through QEMU's stdio chardev: for twelve
# requests both can arrive in one read, so the span may be 0. What these check is that the
# guest ends with its good status (a failed request ends it otherwise, which raises).
def test_guest_completes_every_request_on_qemu(tmp_path: Path) -> None:
    assert virtio_blk._qemu_seconds(4, 3, tmp_path / "disk.img") >= 0


def test_guest_completes_every_request_under_qemu_on_serve_blk() -> None:
    """bench/vhost_user_blk.py: QEMU's vhost-user-blk-pci on `xinterface serve blk`."""
    assert vhost_user_blk.request_ns(4, 3, "xinterface") >= 0

