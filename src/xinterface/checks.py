"""The one rule for integer arguments: an ``int`` that is not a ``bool``.

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds; an API that
takes a length, an address or a count treats ``True`` as the caller's mistake (``EINVAL``), as
the kernel would never see it. Every argument check in the package goes through here.
"""

from __future__ import annotations

import errno
from typing import TypeGuard

from .errors import XInterfaceError


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; else
    ``XInterfaceError(EINVAL)`` naming ``name``."""
    if not is_int(value) or value < minimum:
        what = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise XInterfaceError(errno.EINVAL, f"{name} {value!r} must be {what}",
                              argument=name, value=value)
    return value
