"""vmap and sgmap: views of guest RAM that hold a reference on their interface."""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

from .errors import XInterfaceError
from .refcount import Counted
from .vm import Vm

_ITEM_SIZES = {"H": 2, "I": 4, "Q": 8}


class Handle(Protocol):
    """What a map needs of the interface that made it (an ``XInterface``), and the memory
    services a map's user may call through ``m.intf``. Stated here so that this module need
    not import the interface (docs/design.md, Layout)."""

    @property
    def vm(self) -> Vm: ...
    @property
    def released(self) -> bool: ...
    def get(self) -> Any: ...
    def put(self) -> None: ...
    def _add_map(self, m: GuestMap) -> None: ...
    def _drop_map(self, m: GuestMap) -> None: ...
    def _drop_io(self, entry: Any) -> None: ...
    def copy_to(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    def copy_from(self, gpa: int, length: int) -> bytes: ...
    def vmap(self, gpa: int, length: int) -> XVMap: ...
    def sgmap(self, elements: Sequence[tuple[int, int]]) -> XSGMap: ...


class GuestMap(Counted):
    """Views of guest RAM holding a reference on their interface (``struct kvm_xvmap``)."""

    def __init__(self, intf: Handle, views: list[memoryview]) -> None:
        super().__init__()
        intf.get()
        self.intf = intf
        self._views = views
        self._derived: list[memoryview] = []   # cast() views: released before _views
        intf._add_map(self)

    def _last_put(self) -> None:
        self._release_views()
        self.intf._drop_map(self)
        self.intf.put()

    def _release_views(self) -> None:
        for view in self._derived + self._views:
            try:
                view.release()
            except BufferError:
                raise BufferError(f"{self!r} is still exported to another buffer (e.g. a NumPy "
                                  "array); drop that first") from None

    def _force_release(self) -> None:
        with self._lock:
            if self._dead:
                return
            self._release_views()
            self._dead = True
            self._refs = 0
            self.intf._drop_map(self)

    def __enter__(self) -> GuestMap:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._dead:
            self.put()


class XVMap(GuestMap):
    """``intf.vmap(gpa, length)``: ``.addr`` is a writable zero-copy ``memoryview``.

    After the last ``put`` the view is released: using ``.addr`` raises ``ValueError``.
    """

    _what = "the vmap"

    def __init__(self, intf: Handle, gpa: int, length: int, view: memoryview) -> None:
        self.gpa = gpa
        self.len = length
        super().__init__(intf, [view])

    @property
    def addr(self) -> memoryview:
        return self._views[0]

    def cast(self, fmt: Literal["H", "I", "Q"]) -> memoryview:
        """The mapped bytes as items of ``fmt`` (``"H"``, ``"I"``, ``"Q"``, native x86
        little-endian), released with the map. Reading or writing one item is one load or
        store of its size, which x86 makes atomic at an aligned address: what a device needs
        for an index the guest updates concurrently (``struct`` moves bytes one at a time)."""
        with self._lock:
            if self._dead:
                raise ValueError(f"{self!r} was released")
            size = _ITEM_SIZES.get(fmt)
            if size is None or self.len % size or self.gpa % size:
                raise XInterfaceError(errno.EINVAL, f"cannot view {self!r} as {fmt!r}: a "
                                      "format of H, I or Q whose size divides the length and "
                                      "the address", argument="fmt", value=fmt)
            view = self._views[0].cast(fmt)
            self._derived.append(view)
        return view

    def get(self) -> XVMap:
        super().get()
        return self

    def __enter__(self) -> XVMap:
        return self

    def __repr__(self) -> str:
        return f"XVMap(gpa={self.gpa:#x}, len={self.len:#x})"


class XSGMap(GuestMap):
    """``intf.sgmap([(gpa, length), ...])``: ``.views[i]`` maps element ``i``."""

    _what = "the sgmap"

    def __init__(self, intf: Handle, elements: list[tuple[int, int]],
                 views: list[memoryview]) -> None:
        self.elements = elements
        super().__init__(intf, views)

    @property
    def views(self) -> list[memoryview]:
        return list(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self._views)

    def get(self) -> XSGMap:
        super().get()
        return self

    def __enter__(self) -> XSGMap:
        return self

    def __repr__(self) -> str:
        parts = ", ".join(f"({g:#x}, {n:#x})" for g, n in self.elements[:4])
        more = ", ..." if len(self.elements) > 4 else ""
        return f"XSGMap([{parts}{more}])"

