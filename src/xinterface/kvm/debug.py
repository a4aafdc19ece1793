"""Guest debugging ioctls: ``KVM_SET_GUEST_DEBUG`` and ``KVM_TRANSLATE`` (api.rst 4.38, 4.11).

``struct kvm_guest_debug`` is a control word and the x86 debug registers the vCPU runs with
while debugging is enabled (``debugreg[0..3]`` the addresses, ``[7]`` DR7); a
``KVM_EXIT_DEBUG`` describes the stop in ``struct kvm_debug_exit_arch`` (vector, pc, DR6, DR7).
"""

from __future__ import annotations

import errno
from ctypes import Structure, c_uint8, c_uint32, c_uint64

from ..errors import XInterfaceError
from . import uapi
from ._ioctl import ioctl
from .vcpufd import VcpuFd

GUESTDBG_ENABLE = 0x1
GUESTDBG_SINGLESTEP = 0x2
GUESTDBG_USE_SW_BP = 0x10000
GUESTDBG_USE_HW_BP = 0x20000


class kvm_guest_debug(Structure):
    _fields_ = (("control", c_uint32), ("pad", c_uint32), ("debugreg", c_uint64 * 8))


class kvm_translation(Structure):
    _fields_ = (("linear_address", c_uint64), ("physical_address", c_uint64),
                ("valid", c_uint8), ("writeable", c_uint8), ("usermode", c_uint8),
                ("pad", c_uint8 * 5))


KVM_TRANSLATE = uapi._iowr(0x85, kvm_translation)
KVM_SET_GUEST_DEBUG = uapi._iow(0x9B, kvm_guest_debug)


def set_guest_debug(vcpu: VcpuFd, control: int, debugreg: tuple[int, ...] = ()) -> None:
    """Set the vCPU's debug control and (with ``GUESTDBG_USE_HW_BP``) DR0-DR7."""
    arg = kvm_guest_debug(control=control)
    for i, value in enumerate(debugreg[:8]):
        arg.debugreg[i] = value
    ioctl(vcpu.fd, KVM_SET_GUEST_DEBUG, arg)


def translate(vcpu: VcpuFd, linear: int) -> tuple[int, bool]:
    """The guest-physical address of ``linear`` by the vCPU's page tables, and whether the
    page is writable; ``EFAULT`` (``argument="address"``) when nothing maps it."""
    arg = kvm_translation(linear_address=linear)
    ioctl(vcpu.fd, KVM_TRANSLATE, arg)
    if not arg.valid:
        raise XInterfaceError(errno.EFAULT, f"linear address {linear:#x} is not mapped",
                              argument="address", value=linear)
    return int(arg.physical_address), bool(arg.writeable)


__all__ = ["GUESTDBG_ENABLE", "GUESTDBG_SINGLESTEP", "GUESTDBG_USE_HW_BP",
           "GUESTDBG_USE_SW_BP", "KVM_SET_GUEST_DEBUG", "KVM_TRANSLATE",
           "set_guest_debug", "translate"]
