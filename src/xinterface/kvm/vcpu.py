"""The vCPU fd and its shared ``kvm_run`` page: one method per ioctl."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

from . import uapi
from ._ioctl import ioctl


class VcpuFd:
    """A vCPU. ``run_mmap`` is the shared ``struct kvm_run`` (plus the PIO and ring pages)."""

    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        self.run_mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        if self.fd >= 0:
            self.run_mmap.close()
            os.close(self.fd)
            self.fd = -1

    def run(self) -> int:
        """One ``KVM_RUN``; raises ``InterruptedError`` when a signal or immediate_exit cut it."""
        return ioctl(self.fd, uapi.KVM_RUN)

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
