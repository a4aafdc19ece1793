"""The virtio notify benchmark's guest and measurement, at a tiny size (no timing asserted)."""

from __future__ import annotations

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from xinterface.bench.virtio_notify import notify_cost

pytestmark = needs_kvm


@pytest.mark.parametrize("delivery", list(xi.Delivery), ids=lambda d: d.value)
@pytest.mark.parametrize("round_trip", [False, True], ids=["doorbell", "request"])
def test_notify_cost_serves_every_doorbell(delivery: xi.Delivery, round_trip: bool) -> None:
    # notify_cost raises unless the guest halted and (SYNC, POSTED) every doorbell reached
    # the device, or (EVENTFD) the ioeventfds counted them all; a request waits for its use.
    poll = 200e-6 if delivery is xi.Delivery.POSTED else None
    assert notify_cost(40, delivery, request=round_trip, poll=poll) > 0
