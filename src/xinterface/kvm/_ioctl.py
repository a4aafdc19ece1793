"""One place that issues an ioctl and turns a failure into a :class:`KvmError` naming it.

libc's ``ioctl`` through ctypes rather than ``fcntl.ioctl``: the latter passes an int argument
as a C ``int``, which cannot carry ``KVM_SET_TSS_ADDR``'s addresses above 2 GiB. ctypes
releases the GIL for the call, as ``KVM_RUN`` needs.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from ..errors import kvm_error
from .uapi import IOCTL_NAMES

_libc = ctypes.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: Any = 0, detail: str = "") -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an int or a ctypes object (filled in place)."""
    carg = ctypes.c_ulong(arg) if isinstance(arg, int) else ctypes.byref(arg)
    ret: int = _libc_ioctl(fd, ctypes.c_ulong(request), carg)
    if ret < 0:
        code = ctypes.get_errno()
        if code == 0:  # never seen, but an error without errno must still say which ioctl
            code = errno.EIO
        name = IOCTL_NAMES.get(request, f"ioctl {request:#x}")
        raise kvm_error(name, code, detail)
    return ret
