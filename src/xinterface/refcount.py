"""The seed's kref, for interfaces and maps: ``get``/``put``, and a teardown on the last put."""

from __future__ import annotations

import errno
import threading

from .errors import XInterfaceError


def badf(what: str) -> XInterfaceError:
    return XInterfaceError(errno.EBADF, f"{what} is released", argument="self", value=what)


class Counted:
    """A reference count whose last ``put`` runs ``_last_put`` exactly once."""

    _what = "object"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs = 1
        self._dead = False

    @property
    def released(self) -> bool:
        return self._dead

    def _check(self) -> None:
        if self._dead:
            raise badf(self._what)

    def get(self) -> Counted:
        with self._lock:
            self._check()
            self._refs += 1
        return self

    def put(self) -> None:
        """Drop one reference; the last one releases the object."""
        with self._lock:
            self._check()
            if self._refs > 1:
                self._refs -= 1
                return
            # Released only if the teardown succeeds: a map still exported stays alive.
            self._last_put()
            self._refs = 0
            self._dead = True

    def _last_put(self) -> None:
        raise NotImplementedError

