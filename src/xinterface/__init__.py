"""xinterface: the KVM xinterface I/O services in Python, with a VMM that runs real guests.

Public names live here; every other module is importable but private.
"""

import gc as _gc

# Importing the package creates thousands of long-lived objects (classes, functions, ctypes
# types) and no garbage; collections triggered meanwhile would only scan them, about 5% of
# `xinterface run`'s start-up (docs/performance.md). Paused for the import, then as before.
_gc_was_enabled = _gc.isenabled()
_gc.disable()

try:
    from ._version import __version__
    from .delivery import Delivery
    from .devices.debug import attach_debug_ports
    from .errors import GuestError, GuestIOError, KvmError, XInterfaceError
    from .interface import (
        KVM_XIOEVENT_FLAG_PIO,
        KVM_XIOEVENT_VALID_FLAG_MASK,
        XInterface,
        XIOEvent,
        XIOEventFd,
        XIOEventFlags,
        XIORange,
        XIrqfd,
        XSGMap,
        XVMap,
        bind,
    )
    from .runner.machine import Machine, RunResult
    from .runstate import RunControl, RunState
    from .vm import Vm
finally:
    if _gc_was_enabled:
        _gc.enable()

__all__ = [
    "KVM_XIOEVENT_FLAG_PIO",
    "KVM_XIOEVENT_VALID_FLAG_MASK",
    "Delivery",
    "GuestError",
    "GuestIOError",
    "KvmError",
    "Machine",
    "RunControl",
    "RunResult",
    "RunState",
    "Vm",
    "XIOEvent",
    "XIOEventFd",
    "XIOEventFlags",
    "XIORange",
    "XInterface",
    "XInterfaceError",
    "XIrqfd",
    "XSGMap",
    "XVMap",
    "__version__",
    "bind",
]

# The composition root: the runner imports no device; the facade gives Machine(debug_ports=True)
# its ports (0xe9 console, 0xf4 exit), attached through the public xinterface like any client.
Machine.default_devices = (attach_debug_ports,)
