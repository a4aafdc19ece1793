"""The system fd, ``/dev/kvm``: one method per ioctl."""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import KvmError, XInterfaceError
from . import uapi
from ._ioctl import ioctl
from .vmfd import VmFd

DEV_KVM = "/dev/kvm"


class Kvm:
    """An open ``/dev/kvm``. Refuses a kernel whose API version is not 12."""

    def __init__(self, path: str = DEV_KVM) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise XInterfaceError(
                errno.ENOENT, f"{path} does not exist: KVM is not available on this host "
                "(load kvm_intel, kvm_amd or kvm_pvm)", argument="path", value=path,
            ) from None
        except PermissionError:
            raise XInterfaceError(
                errno.EACCES, f"no permission to open {path}: add yourself to the 'kvm' group "
                "or run as root", argument="path", value=path,
            ) from None
        try:
            version = self.get_api_version()
            if version != uapi.KVM_API_VERSION:
                raise XInterfaceError(
                    errno.EINVAL, f"KVM API version {version}, expected {uapi.KVM_API_VERSION}",
                    argument="path", value=path,
                )
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_api_version(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self) -> list[uapi.kvm_cpuid_entry2]:
        """All CPUID entries KVM can give a guest; grows the buffer while KVM says E2BIG."""
        nent = 128
        while True:
            buf = uapi.cpuid2_buffer(nent)
            try:
                ioctl(self.fd, uapi.KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as exc:
                if exc.errno == errno.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise
            return [uapi.kvm_cpuid_entry2.from_buffer_copy(e) for e in uapi.cpuid2_entries(buf)]

    def get_msr_index_list(self) -> list[int]:
        """The MSRs KVM saves and restores for a guest (``KVM_GET_MSR_INDEX_LIST``)."""
        nmsrs = 64
        while True:
            buf = (ctypes.c_uint32 * (1 + nmsrs))(nmsrs)
            try:
                ioctl(self.fd, uapi.KVM_GET_MSR_INDEX_LIST, buf)
            except KvmError as exc:
                if exc.errno == errno.E2BIG and nmsrs < 65536:
                    nmsrs = max(buf[0], nmsrs * 2)
                    continue
                raise
            return list(buf[1:1 + buf[0]])

    def create_vm(self, machine_type: int = 0) -> VmFd:
        mmap_size = self.get_vcpu_mmap_size()
        # KVM_CREATE_VM may fail with EINTR while the kernel waits on mmu notifiers.
        for _ in range(100):
            try:
                return VmFd(ioctl(self.fd, uapi.KVM_CREATE_VM, machine_type), mmap_size)
            except KvmError as exc:
                if exc.errno != errno.EINTR:
                    raise
        raise KvmError("KVM_CREATE_VM", errno.EINTR, "interrupted 100 times")
