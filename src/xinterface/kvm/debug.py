"""Guest debugging: ``KVM_SET_GUEST_DEBUG`` and ``KVM_TRANSLATE`` (api.rst), over the
structures of :mod:`.uapi`.

``struct kvm_guest_debug`` is a control word and the x86 debug registers the vCPU runs with
while debugging is enabled (``debugreg[0..3]`` the addresses, ``[7]`` DR7); a
``KVM_EXIT_DEBUG`` describes the stop (:class:`.exits.Debug`).

An exception that belongs to the guest (its own ``int3``, its own EFLAGS.TF or debug
registers) but reached userspace instead is handed back with :func:`inject_exception`
(``KVM_SET_VCPU_EVENTS``), as the CPU would have delivered it.
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
# No interrupt is injected while single-stepping: else the step lands in the handler, and
# the frame it pushes carries the TF that stepping set (api.rst, KVM_CAP_SET_GUEST_DEBUG2).
GUESTDBG_BLOCKIRQ = uapi.KVM_GUESTDBG_BLOCKIRQ
DB_VECTOR, BP_VECTOR = 1, 3
MP_STATE_HALTED = 3  # KVM_MP_STATE_HALTED (api.rst, KVM_GET_MP_STATE)
# DR6 (Intel SDM vol. 3, 18.2.3): B0-B3 and BS say why a #DB came; the rest reads as 1.
DR6_HITS, DR6_BS, DR6_FIXED = 0xF, 1 << 14, 0xFFFF0FF0


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


def inject_exception(vcpu: VcpuFd, vector: int, dr6: int | None = None) -> None:
    """Deliver exception ``vector`` (no error code) at the vCPU's next entry, from RIP as it
    is: for #BP, a trap, RIP must already be past the ``int3`` unless KVM itself stopped at
    it (then KVM adds the instruction's length). For #DB, ``dr6`` is what the guest's
    handler reads in DR6 (``KVM_SET_DEBUGREGS``)."""
    if dr6 is not None:
        regs = vcpu.get_state(uapi.KVM_GET_DEBUGREGS, uapi.kvm_debugregs)
        regs.dr6 = DR6_FIXED | dr6
        vcpu.set_state(uapi.KVM_SET_DEBUGREGS, regs)
    events = vcpu.get_state(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
    events.exception.injected = 1
    events.exception.pending = 0
    events.exception.nr = vector
    events.exception.has_error_code = 0
    events.exception.error_code = 0
    vcpu.set_state(uapi.KVM_SET_VCPU_EVENTS, events)


def halted(vcpu: VcpuFd) -> bool:
    """The vCPU waits in HLT (in-kernel irqchip): its next ``KVM_RUN`` blocks until an
    interrupt wakes it."""
    state = vcpu.get_state(uapi.KVM_GET_MP_STATE, uapi.kvm_mp_state)
    return int(state.mp_state) == MP_STATE_HALTED


__all__ = [
    "BP_VECTOR",
    "DB_VECTOR",
    "DR6_BS",
    "DR6_FIXED",
    "DR6_HITS",
    "GUESTDBG_BLOCKIRQ",
    "GUESTDBG_ENABLE",
    "GUESTDBG_SINGLESTEP",
    "GUESTDBG_USE_HW_BP",
    "GUESTDBG_USE_SW_BP",
    "halted",
    "inject_exception",
    "set_guest_debug",
    "translate",
]
