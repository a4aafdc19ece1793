"""A virtqueue's state for a snapshot, through the queue's public attributes only: its
configuration (size, ready, the three ring addresses), where the device is in the rings
(``next_avail``, ``next_used``), and the features it follows (EVENT_IDX, INDIRECT_DESC).

Loading checks what came from the file as a driver's writes are checked (§2.7: a size that
is a power of two up to the maximum, aligned rings in guest RAM), then maps the rings as
:meth:`~xinterface.virtio.device.VirtioDevice.set_queue_ready` does. The last used index a
notification was decided for is not kept (the queue keeps it privately): after a restore the
first used buffer of an EVENT_IDX queue always notifies, one interrupt a driver takes as
spurious at worst.
"""

from __future__ import annotations

from ..devices.persist import State, bad_field, field_bool, field_int
from ..errors import XInterfaceError
from ..interface import XInterface
from ..memory import GuestMemory
from .chain import VirtqueueError
from .queue import AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, VirtQueue, ring_sizes

_ADDRESSES = ("desc_addr", "avail_addr", "used_addr")


def save_queue(queue: VirtQueue) -> State:
    return {"size": queue.size, "ready": queue.ready,
            **{name: getattr(queue, name) for name in _ADDRESSES},
            "next_avail": queue.next_avail, "next_used": queue.next_used,
            "event_idx": queue.event_idx, "indirect": queue.indirect,
            "signalled_used": queue.signalled_used}


def load_queue(queue: VirtQueue, state: State, intf: XInterface | None) -> None:
    """``state`` into ``queue`` (reset, not ready); its rings are mapped through ``intf``
    if it was ready. ``EINVAL`` naming the field that cannot be taken."""
    size = field_int(state, "size", 1, queue.max_size)
    if size & (size - 1):
        raise bad_field("size", size, "is not a power of two")
    ready = field_bool(state, "ready")
    addresses = {name: field_int(state, name, 0, (1 << 64) - 1) for name in _ADDRESSES}
    next_avail = field_int(state, "next_avail", 0, 0xFFFF)
    next_used = field_int(state, "next_used", 0, 0xFFFF)
    event_idx, indirect = field_bool(state, "event_idx"), field_bool(state, "indirect")
    signalled = (None if state.get("signalled_used") is None
                 else field_int(state, "signalled_used", 0, 0xFFFF))
    queue.reset()
    queue.size = size
    for name, value in addresses.items():
        setattr(queue, name, value)
    queue.event_idx, queue.indirect = event_idx, indirect
    if ready:
        if intf is None or intf.vm.memory is None:
            raise bad_field("ready", ready, "is set but the device is not connected")
        _check_rings(queue, intf.vm.memory, addresses)
        try:
            queue.map(intf)
        except VirtqueueError as exc:
            queue.reset()
            raise bad_field("desc_addr", addresses["desc_addr"],
                            f"cannot be used: {exc}") from None
        queue.ready = True
    queue.next_avail, queue.next_used = next_avail, next_used
    queue.signalled_used = signalled


def _check_rings(queue: VirtQueue, memory: GuestMemory, addresses: dict[str, int]) -> None:
    """Each ring aligned (§2.7) and in guest RAM, the used ring writable."""
    for (name, addr), length, align in zip(addresses.items(), ring_sizes(queue.size),
                                           (DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN), strict=True):
        if addr % align:
            raise bad_field(name, addr, f"is not {align}-byte aligned")
        try:
            pieces = memory.spans(addr, length)
        except XInterfaceError:
            raise bad_field(name, addr, f"+{length:#x} is not in guest RAM") from None
        if name == "used_addr" and any(region.readonly for region, _, _ in pieces):
            raise bad_field(name, addr, "is read-only memory (the device writes it)")
