"""What a device gives a snapshot: its guest-visible state as JSON-able data, and back.

A device is saved when it has both methods (a structural :class:`Persistent`; it need not
import this module). ``save()`` runs on a paused machine: no request half served, so the
state is what the guest last saw. ``load(state)`` runs on the same device built again from
the same description, before any vCPU runs; ``state`` came from a file, so it is checked as
guest input is (``XInterfaceError`` ``EINVAL`` naming the field), never trusted.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol, runtime_checkable

from ..checks import is_int
from ..errors import XInterfaceError

State = dict[str, Any]


@runtime_checkable
class Persistent(Protocol):
    def save(self) -> State: ...
    def load(self, state: State) -> None: ...


def field_int(state: State, name: str, low: int, high: int) -> int:
    """``state[name]`` as an int in ``[low, high]``: ``EINVAL`` naming it otherwise."""
    value = state.get(name)
    if not is_int(value) or not low <= value <= high:
        raise XInterfaceError(errno.EINVAL, f"saved device state: {name} {value!r} is not an "
                              f"int from {low:#x} to {high:#x}", argument=name, value=value)
    return int(value)
