"""The KVM ABI: structures and numbers in :mod:`.uapi`, one object per fd level."""

from .system import Kvm
from .vcpu import VcpuFd
from .vm import VmFd

__all__ = ["Kvm", "VcpuFd", "VmFd"]
