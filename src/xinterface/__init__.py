"""xinterface: the KVM xinterface I/O services in Python, with a VMM that runs real guests.

Public names live here; every other module is importable but private.
"""

from .errors import GuestError, GuestIOError, KvmError, XInterfaceError
from .machine import Machine, RunResult
from .xinterface import (
    KVM_XIOEVENT_FLAG_PIO,
    KVM_XIOEVENT_VALID_FLAG_MASK,
    XInterface,
    XIOEvent,
    XIOEventFlags,
    XIORange,
    XSGMap,
    XVMap,
    bind,
)

__all__ = [
    "KVM_XIOEVENT_FLAG_PIO",
    "KVM_XIOEVENT_VALID_FLAG_MASK",
    "GuestError",
    "GuestIOError",
    "KvmError",
    "Machine",
    "RunResult",
    "XIOEvent",
    "XIOEventFlags",
    "XIORange",
    "XInterface",
    "XInterfaceError",
    "XSGMap",
    "XVMap",
    "bind",
]
__version__ = "0.1.0"
