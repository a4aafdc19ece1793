"""Which exit loop runs: chosen here, once, at import, and nowhere else.

The compiled loop (``xinterface._fastloop``, built from ``_fastloop.c`` by setup.py when a
compiler and Python's headers are there) serves the hot exits and the coalesced ring in C;
the Python loop in :mod:`xinterface.runner.vcpu_loop` is the reference and the fallback. Setting
``XINTERFACE_PURE_PYTHON=1`` forces the Python loop even when the extension is built.
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_PYTHON_ENV = "XINTERFACE_PURE_PYTHON"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from . import _fastloop
    except ImportError:  # not built: no compiler, or installed from a pure wheel
        return None
    return _fastloop


fastloop = _load()
LOOP = "compiled" if fastloop is not None else "python"
"""``"compiled"`` or ``"python"``: what ``xinterface --version`` and the bench report."""
