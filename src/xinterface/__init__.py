"""xinterface: the KVM xinterface I/O services in Python, with a VMM that runs real guests.

Public names live here; every other module is importable but private.
"""

from .delivery import Delivery
from .errors import GuestError, GuestIOError, KvmError, XInterfaceError
from .machine import Machine, RunResult
from .xinterface import (
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

__all__ = [
    "KVM_XIOEVENT_FLAG_PIO",
    "KVM_XIOEVENT_VALID_FLAG_MASK",
    "Delivery",
    "GuestError",
    "GuestIOError",
    "KvmError",
    "Machine",
    "RunResult",
    "XIOEvent",
    "XIOEventFd",
    "XIOEventFlags",
    "XIORange",
    "XInterface",
    "XInterfaceError",
    "XIrqfd",
    "XSGMap",
    "XVMap",
    "bind",
]
__version__ = "0.1.0"
