"""What a device gives a snapshot: its guest-visible state as JSON-able data, and back.

A device is saved when it has both methods (a structural :class:`Persistent`; it need not
import this module). ``save()`` runs on a paused machine: no request half served, so the
state is what the guest last saw. ``load(state)`` runs on the same device built again from
the same description, before any vCPU runs; ``state`` came from a file, so it is checked as
guest input is (``XInterfaceError`` ``EINVAL`` naming the field), never trusted.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
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


def field_bool(state: State, name: str) -> bool:
    """``state[name]`` as a bool: ``EINVAL`` naming it otherwise."""
    value = state.get(name)
    if not isinstance(value, bool):
        raise XInterfaceError(errno.EINVAL, f"saved device state: {name} {value!r} is not "
                              "true or false", argument=name, value=value)
    return value


def field_bytes(state: State, name: str, length: int | None = None, *,
                limit: int = 1 << 20) -> bytes:
    """``state[name]`` (hex text) as bytes, of ``length`` bytes if given, else at most
    ``limit``: ``EINVAL`` naming it otherwise."""
    value = state.get(name)
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        data = None
    if data is None or (length is not None and len(data) != length) or len(data) > limit:
        want = f"{length} bytes" if length is not None else f"at most {limit} bytes"
        raise XInterfaceError(errno.EINVAL, f"saved device state: {name} is not hex of "
                              f"{want}", argument=name, value=value)
    return data


def field_table(state: State, name: str) -> State:
    """``state[name]`` as a table (a device's nested state): ``EINVAL`` naming it."""
    value = state.get(name)
    if not isinstance(value, dict):
        raise XInterfaceError(errno.EINVAL, f"saved device state: {name} is not a table",
                              argument=name, value=value)
    return value


def field_list(state: State, name: str, length: int) -> list[Any]:
    """``state[name]`` as a list of ``length`` items: ``EINVAL`` naming it otherwise."""
    value = state.get(name)
    if not isinstance(value, list) or len(value) != length:
        raise XInterfaceError(errno.EINVAL, f"saved device state: {name} is not a list of "
                              f"{length}", argument=name, value=value)
    return value


def bad_field(name: str, value: object, why: str) -> XInterfaceError:
    """The ``EINVAL`` of a saved value that is well formed but cannot be taken."""
    return XInterfaceError(errno.EINVAL, f"saved device state: {name} {why}", argument=name,
                           value=value)


@runtime_checkable
class Composite(Protocol):
    """A device whose :meth:`Persistent.save` holds the state of others too: ``parts()``
    are those objects (each must be :class:`Persistent`, or the snapshot refuses naming
    it), and ``covers(space, addr)`` whether a bus entry at ``addr`` of ``space`` ("pio",
    "mmio") is one of its own or of its parts' (a BAR the guest placed, a doorbell), which
    a snapshot then does not count as a device of its own."""

    def parts(self) -> list[object]: ...
    def covers(self, space: str, addr: int) -> bool: ...


@contextlib.contextmanager
def nested(where: str) -> Iterator[None]:
    """Name the fields of a nested state by their path: a refusal of ``size`` inside
    ``with nested("queues[1]")`` names ``queues[1].size``."""
    try:
        yield
    except XInterfaceError as exc:
        words = str(exc.strerror).rsplit(" (", 1)[0]
        inner = exc.argument or "?"
        raise XInterfaceError(exc.errno or errno.EINVAL, words.replace(
            f"saved device state: {inner}", f"saved device state: {where}.{inner}", 1),
            argument=f"{where}.{inner}", value=exc.value) from None
