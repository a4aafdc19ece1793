"""The vCPU fd and its shared ``kvm_run`` page: one method per ioctl.

``KVM_RUN`` is the one ioctl entered per exit, so :meth:`VcpuFd.run` does not go through
:func:`._ioctl.ioctl` (ctypes builds an argument object per call) but through
:func:`kvm_run_ioctl`, and turns a failure into the same :class:`KvmError`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import kvm_error
from . import uapi
from ._ioctl import ioctl

# CPython 3.14 made fcntl.ioctl retry a call that fails with EINTR by itself (gh-132742:
# "System calls failing with EINTR are automatically retried"). Off the main thread no signal
# handler runs to end that retry, so a KVM_RUN kicked by a stop would be entered again, fail
# again with EINTR (immediate_exit is set), and so on: the thread would never see the stop.
# There KVM_RUN goes through libc's ioctl (ctypes), which returns EINTR like any error.
FCNTL_IOCTL_RETRIES_EINTR = sys.version_info >= (3, 14)

# (fd, request) -> 0, or raises OSError (InterruptedError for EINTR); the argument is 0.
RunIoctl = Callable[[int, int], object]
_libc_ioctl: Callable[[int, int, int], int] | None = None


def kvm_run_ioctl() -> RunIoctl:
    """The call ``KVM_RUN`` is entered with: one that never retries ``EINTR``."""
    global _libc_ioctl
    if not FCNTL_IOCTL_RETRIES_EINTR:
        # Without a third argument: CPython <= 3.13 tries an int third argument as a
        # writable, then a read-only buffer first, raising and clearing a TypeError each time
        # (about 1 us); without one it passes 0, which KVM_RUN requires (kvm_vcpu_ioctl fails
        # it with EINVAL on any other value).
        return fcntl.ioctl
    if _libc_ioctl is None:
        call = ctypes.CDLL(None, use_errno=True).ioctl
        call.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
        call.restype = ctypes.c_int
        call.errcheck = _raise_errno
        _libc_ioctl = call
    libc_ioctl = _libc_ioctl
    return lambda fd, request: libc_ioctl(fd, request, 0)


def _raise_errno(result: Any, func: Any, args: Any) -> Any:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))  # OSError(EINTR, ...) is an InterruptedError
    return result


_S = TypeVar("_S", bound=ctypes.Structure)
_KVM_RUN = uapi.KVM_RUN
_IMMEDIATE_EXIT = uapi.kvm_run.immediate_exit.offset


class VcpuFd:
    """A vCPU. ``run_mmap`` is the shared ``struct kvm_run`` (plus the PIO and ring pages)."""

    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        self.run_mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        self._enter = kvm_run_ioctl()

    def close(self) -> None:
        if self.fd >= 0:
            self.run_mmap.close()
            os.close(self.fd)
            self.fd = -1

    def run(self) -> None:
        """One ``KVM_RUN``, until the next exit (:func:`.exits.decode` says which).

        Raises :class:`~xinterface.errors.KvmError`: an ``InterruptedError`` (``EINTR``) when a
        signal or ``immediate_exit`` ended it first (never retried: that is how a stop reaches
        a vCPU thread), a ``BlockingIOError`` (``EAGAIN``) when an AP left wait-for-SIPI and
        must be run again, a plain ``KvmError`` with the kernel's errno otherwise.
        """
        try:
            self._enter(self.fd, _KVM_RUN)
        except OSError as exc:
            raise kvm_error("KVM_RUN", exc.errno or errno.EIO) from None

    def set_immediate_exit(self, value: bool) -> None:
        """``kvm_run.immediate_exit``: while set, ``KVM_RUN`` returns ``EINTR`` at once."""
        self.run_mmap[_IMMEDIATE_EXIT] = int(value)

    def get_regs(self) -> uapi.kvm_regs:
        regs = uapi.kvm_regs()
        ioctl(self.fd, uapi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        ioctl(self.fd, uapi.KVM_SET_REGS, regs)

    def get_sregs(self) -> uapi.kvm_sregs:
        sregs = uapi.kvm_sregs()
        ioctl(self.fd, uapi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        ioctl(self.fd, uapi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> uapi.kvm_fpu:
        fpu = uapi.kvm_fpu()
        ioctl(self.fd, uapi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        ioctl(self.fd, uapi.KVM_SET_FPU, fpu)

    def set_cpuid2(self, entries: Sequence[uapi.kvm_cpuid_entry2]) -> None:
        buf = uapi.cpuid2_buffer(len(entries))
        for slot, entry in zip(uapi.cpuid2_entries(buf), entries, strict=False):
            slot.function, slot.index, slot.flags = entry.function, entry.index, entry.flags
            slot.eax, slot.ebx, slot.ecx, slot.edx = entry.eax, entry.ebx, entry.ecx, entry.edx
        ioctl(self.fd, uapi.KVM_SET_CPUID2, buf)

    def get_cpuid2(self, nent: int = 256) -> list[uapi.kvm_cpuid_entry2]:
        buf = uapi.cpuid2_buffer(nent)
        ioctl(self.fd, uapi.KVM_GET_CPUID2, buf)
        return [uapi.kvm_cpuid_entry2.from_buffer_copy(e) for e in uapi.cpuid2_entries(buf)]

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        buf = uapi.msrs_buffer([(i, 0) for i in indices])
        n = ioctl(self.fd, uapi.KVM_GET_MSRS, buf)
        return {e.index: e.data for e in list(uapi.msrs_entries(buf))[:n]}

    def set_msrs(self, values: dict[int, int]) -> int:
        return ioctl(self.fd, uapi.KVM_SET_MSRS, uapi.msrs_buffer(list(values.items())))

    # --- state save and restore: each a structure KVM fills or reads whole -----------------
    def get_state(self, request: int, ctype: type[_S]) -> _S:
        """One ``KVM_GET_*`` of the state ioctls (``KVM_GET_XSAVE``, ``KVM_GET_LAPIC``, ...)
        into a new ``ctype``."""
        value = ctype()
        ioctl(self.fd, request, value, f"vCPU {self.index}")
        return value

    def set_state(self, request: int, value: ctypes.Structure) -> None:
        """The matching ``KVM_SET_*``."""
        ioctl(self.fd, request, value, f"vCPU {self.index}")
