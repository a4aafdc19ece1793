"""POSTED order: a posted write is never overtaken, with a poller draining the ring.

docs/guarantees.md; each test reproduced a defect before its fix."""

from __future__ import annotations

import time

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.guarantees.helpers import (
    P_PORT,
    PIO,
    POSTED,
    S_PORT,
    value,
)

pytestmark = needs_kvm


# --- POSTED order with a poller ------------------------------------------------------------------


def test_posted_write_is_not_overtaken_while_the_poller_is_in_its_handler(
        guest: Assemble) -> None:
    count = 150
    log: list[tuple[str, int]] = []

    def on_posted(ev: xi.XIOEvent, payload: bytes) -> None:
        time.sleep(0.002)  # the guest's next (SYNC) write exits meanwhile
        log.append(("P", value(payload)))

    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("posted_then_sync", POSTED=P_PORT, SYNC=S_PORT, COUNT=count,
                          DELAY=1000), mode="protected")
        intf = xi.bind(m)
        intf.ioevent(P_PORT, 4, PIO, signal=on_posted, delivery=POSTED)
        intf.ioevent(S_PORT, 4, PIO, signal=lambda ev, p: log.append(("S", value(p))))
        assert m.run(timeout=60, poll=0.0002).reason == "hlt"
    assert log == [(kind, i) for i in range(1, count + 1) for kind in "PS"]
