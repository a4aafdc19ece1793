"""The kernel's fast paths behind the xioevent API: POSTED (coalesced ring), EVENTFD."""

import enum


class Delivery(enum.Enum):
    """How guest writes reach an event's ``signal`` (docs/delivery.md)."""

    SYNC = "sync"        # one exit to userspace per write; the seed's behaviour
    POSTED = "posted"    # KVM's coalesced MMIO/PIO ring: no exit, full payload, in order
    EVENTFD = "eventfd"  # KVM ioeventfd: no exit, no payload (or the datamatch value)


__all__ = ["Delivery"]
