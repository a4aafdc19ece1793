"""The virtio-blk benchmark's guest runs to a clean end on both VMMs (every request OK), and
its marks time the rounds on each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import needs_kvm
from xinterface.bench import virtio_blk
from xinterface.delivery import Delivery

pytestmark = needs_kvm


@pytest.mark.parametrize("doorbells", [Delivery.SYNC, Delivery.EVENTFD, Delivery.POSTED])
def test_guest_completes_every_request_on_xinterface(tmp_path: Path, doorbells: Delivery) -> None:
    assert virtio_blk._own_seconds(4, 3, tmp_path / "disk.img", doorbells) > 0


def test_guest_completes_every_request_on_qemu(tmp_path: Path) -> None:
    assert virtio_blk._qemu_seconds(4, 3, tmp_path / "disk.img") > 0

