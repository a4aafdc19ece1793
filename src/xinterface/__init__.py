"""xinterface: the KVM xinterface I/O services in Python, with a VMM that runs real guests.

Public names live here; every other module is importable but private.
"""

from .errors import GuestError, GuestIOError, KvmError, XInterfaceError
from .machine import Machine, RunResult
from .xinterface import XInterface, XSGMap, XVMap, bind

__all__ = [
    "GuestError",
    "GuestIOError",
    "KvmError",
    "Machine",
    "RunResult",
    "XInterface",
    "XInterfaceError",
    "XSGMap",
    "XVMap",
    "bind",
]
__version__ = "0.1.0"
