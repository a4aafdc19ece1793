"""The VM fd: one method per ioctl."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from . import uapi
from ._ioctl import ioctl
from .vcpufd import VcpuFd


class VmFd:
    """A KVM virtual machine. ``vcpu_mmap_size`` is the system's ``KVM_GET_VCPU_MMAP_SIZE``,
    the size of each vCPU's shared ``kvm_run`` mapping."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)

    def create_vcpu(self, index: int) -> VcpuFd:
        fd = ioctl(self.fd, uapi.KVM_CREATE_VCPU, index, f"vCPU {index}")
        try:
            return VcpuFd(fd, index, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def set_user_memory_region(
        self, slot: int, gpa: int, size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        region = uapi.kvm_userspace_memory_region(slot, flags, gpa, size, userspace_addr)
        ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region,
              f"slot {slot} gpa {gpa:#x} size {size:#x}")

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, uapi.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        ioctl(self.fd, uapi.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        ioctl(self.fd, uapi.KVM_CREATE_PIT2, uapi.kvm_pit_config(flags=flags))

    def irq_line(self, irq: int, level: int) -> None:
        arg = uapi.kvm_irq_level(level=level)
        arg.irq = irq
        ioctl(self.fd, uapi.KVM_IRQ_LINE, arg, f"irq {irq}")

    def ioeventfd(self, arg: uapi.kvm_ioeventfd) -> None:
        ioctl(self.fd, uapi.KVM_IOEVENTFD, arg, f"addr {arg.addr:#x} len {arg.len}")

    def irqfd(self, arg: uapi.kvm_irqfd) -> None:
        ioctl(self.fd, uapi.KVM_IRQFD, arg, f"gsi {arg.gsi}")

    def set_gsi_routing(self, entries: Sequence[uapi.kvm_irq_routing_entry]) -> None:
        """``KVM_SET_GSI_ROUTING``: ``entries`` become the whole routing table (the irqchip's
        default pins are replaced too, so a caller keeping them lists them)."""
        header = ctypes.sizeof(uapi.kvm_irq_routing)
        size = ctypes.sizeof(uapi.kvm_irq_routing_entry)
        buf = (ctypes.c_uint8 * (header + size * len(entries)))()
        uapi.kvm_irq_routing.from_buffer(buf).nr = len(entries)
        for i, entry in enumerate(entries):
            ctypes.memmove(ctypes.addressof(buf) + header + i * size, ctypes.addressof(entry),
                           size)
        ioctl(self.fd, uapi.KVM_SET_GSI_ROUTING, buf, f"{len(entries)} routes")

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool) -> None:
        zone = uapi.kvm_coalesced_mmio_zone(addr=addr, size=size)
        zone.pio = int(pio)
        ioctl(self.fd, uapi.KVM_REGISTER_COALESCED_MMIO, zone, f"addr {addr:#x} size {size}")

    def unregister_coalesced_mmio(self, addr: int, size: int, pio: bool) -> None:
        zone = uapi.kvm_coalesced_mmio_zone(addr=addr, size=size)
        zone.pio = int(pio)
        ioctl(self.fd, uapi.KVM_UNREGISTER_COALESCED_MMIO, zone, f"addr {addr:#x} size {size}")

    def get_state(self, request: int, value: ctypes.Structure) -> None:
        """A VM-wide ``KVM_GET_*`` (``KVM_GET_IRQCHIP``, ``KVM_GET_PIT2``, ``KVM_GET_CLOCK``),
        filling ``value`` in place (an irqchip's ``chip_id`` is read from it)."""
        ioctl(self.fd, request, value)

    def set_state(self, request: int, value: ctypes.Structure) -> None:
        """The matching ``KVM_SET_*``."""
        ioctl(self.fd, request, value)

    def get_dirty_log(self, slot: int, bitmap: ctypes.Array[ctypes.c_uint64]) -> None:
        """``KVM_GET_DIRTY_LOG``: the pages of ``slot`` written since the last call, one bit
        each, into ``bitmap`` (the slot must have ``KVM_MEM_LOG_DIRTY_PAGES``)."""
        log = uapi.kvm_dirty_log(slot=slot)
        log.dirty_bitmap = ctypes.addressof(bitmap)
        ioctl(self.fd, uapi.KVM_GET_DIRTY_LOG, log, f"slot {slot}")
