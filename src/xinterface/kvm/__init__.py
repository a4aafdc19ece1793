"""The KVM ABI: structures and numbers in :mod:`.uapi`, one object per fd level."""

from .system import Kvm
from .vcpufd import VcpuFd
from .vmfd import VmFd

__all__ = ["Kvm", "VcpuFd", "VmFd"]
