"""Which exit loop and which virtio data path run: chosen here, once, at import, and nowhere
else.

The compiled loop (``xinterface._fastloop``, built from ``_fastloop.c`` by setup.py when a
compiler and Python's headers are there) serves the hot exits and the coalesced ring in C;
the Python loop in :mod:`xinterface.runner.vcpu_loop` is the reference and the fallback. The
compiled data path (``xinterface._dataplane``, from ``_dataplane.c``) serves the built-in
virtio devices' chains; :mod:`xinterface.virtio.queue` and ``chain`` are its reference.
Setting ``XINTERFACE_PURE_PYTHON=1`` forces both Python paths even when they are built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

PURE_PYTHON_ENV = "XINTERFACE_PURE_PYTHON"


def _pure() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def _load() -> ModuleType | None:
    if _pure():
        return None
    try:
        from . import _fastloop
    except ImportError:  # not built: no compiler, or installed from a pure wheel
        return None
    return _fastloop


def _load_dataplane() -> ModuleType | None:
    if _pure():
        return None
    try:
        from . import _dataplane
    except ImportError:  # not built, as for _fastloop
        return None
    return _dataplane


fastloop = _load()
dataplane = _load_dataplane()
LOOP = "compiled" if fastloop is not None else "python"
"""``"compiled"`` or ``"python"``: what ``xinterface --version`` and the bench report."""
DATA_PATH = "compiled" if dataplane is not None else "python"
"""The virtio data path, likewise."""


@contextmanager
def python_data_path() -> Iterator[None]:
    """The Python data path for the queues mapped and the doorbells served inside, whatever
    was chosen at import: the bench's same-run comparison. Not for use while another
    thread brings devices up."""
    global dataplane
    chosen, dataplane = dataplane, None
    try:
        yield
    finally:
        dataplane = chosen
