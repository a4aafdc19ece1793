"""Guest debugging: ``KVM_SET_GUEST_DEBUG`` and ``KVM_TRANSLATE`` (api.rst), over the
structures of :mod:`.uapi`.

``struct kvm_guest_debug`` is a control word and the x86 debug registers the vCPU runs with
while debugging is enabled (``debugreg[0..3]`` the addresses, ``[7]`` DR7); a
``KVM_EXIT_DEBUG`` describes the stop (:class:`.exits.Debug`).
"""

from __future__ import annotations

import errno

from ..errors import XInterfaceError
from . import uapi
from ._ioctl import ioctl
from .vcpufd import VcpuFd

GUESTDBG_ENABLE = uapi.KVM_GUESTDBG_ENABLE
GUESTDBG_SINGLESTEP = uapi.KVM_GUESTDBG_SINGLESTEP
GUESTDBG_USE_SW_BP = uapi.KVM_GUESTDBG_USE_SW_BP
GUESTDBG_USE_HW_BP = uapi.KVM_GUESTDBG_USE_HW_BP


def set_guest_debug(vcpu: VcpuFd, control: int, debugreg: tuple[int, ...] = ()) -> None:
    """Set the vCPU's debug control and (with ``GUESTDBG_USE_HW_BP``) DR0-DR7."""
    arg = uapi.kvm_guest_debug(control=control)
    for i, value in enumerate(debugreg[:8]):
        arg.arch.debugreg[i] = value
    ioctl(vcpu.fd, uapi.KVM_SET_GUEST_DEBUG, arg)


def translate(vcpu: VcpuFd, linear: int) -> tuple[int, bool]:
    """The guest-physical address of ``linear`` by the vCPU's page tables, and whether the
    page is writable; ``EFAULT`` (``argument="address"``) when nothing maps it."""
    arg = uapi.kvm_translation(linear_address=linear)
    ioctl(vcpu.fd, uapi.KVM_TRANSLATE, arg)
    if not arg.valid:
        raise XInterfaceError(errno.EFAULT, f"linear address {linear:#x} is not mapped",
                              argument="address", value=linear)
    return int(arg.physical_address), bool(arg.writeable)


__all__ = ["GUESTDBG_ENABLE", "GUESTDBG_SINGLESTEP", "GUESTDBG_USE_HW_BP",
           "GUESTDBG_USE_SW_BP", "set_guest_debug", "translate"]
