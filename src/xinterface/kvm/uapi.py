"""The KVM userspace ABI for x86-64: ioctl numbers, constants and ctypes structures.

Transcribed from ``include/uapi/linux/kvm.h`` and ``arch/x86/include/uapi/asm/kvm.h``.
``tests/kvm/test_uapi.py`` compiles a C program against the system's ``<linux/kvm.h>``
and checks every size, field offset and ioctl number here against it.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, Union, c_int32, c_uint8, c_uint16, c_uint32, c_uint64, sizeof

PAGE_SIZE = 4096

# --- ioctl encoding (include/uapi/asm-generic/ioctl.h) ---------------------------------------
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (size << _IOC_SIZESHIFT)
        | (KVMIO << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
    )


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, ctype: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ, nr, sizeof(ctype))


def _iow(nr: int, ctype: type[ctypes._CData]) -> int:
    return _ioc(_IOC_WRITE, nr, sizeof(ctype))


def _iowr(nr: int, ctype: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, sizeof(ctype))


# --- structures --------------------------------------------------------------------------------


class kvm_userspace_memory_region(Structure):
    _fields_ = (
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    )


class kvm_regs(Structure):
    _fields_ = tuple(
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    )


class kvm_segment(Structure):
    _fields_ = (
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    )


class kvm_dtable(Structure):
    _fields_ = (
        ("base", c_uint64),
        ("limit", c_uint16),
        ("padding", c_uint16 * 3),
    )


KVM_NR_INTERRUPTS = 256


class kvm_sregs(Structure):
    _fields_ = (
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    )


class kvm_fpu(Structure):
    _fields_ = (
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    )


class kvm_cpuid_entry2(Structure):
    _fields_ = (
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    )


class kvm_cpuid2(Structure):
    """Header of ``struct kvm_cpuid2``; the entries follow it (see :func:`cpuid2_buffer`)."""

    _fields_ = (
        ("nent", c_uint32),
        ("padding", c_uint32),
    )


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class kvm_msr_entry(Structure):
    _fields_ = (
        ("index", c_uint32),
        ("reserved", c_uint32),
        ("data", c_uint64),
    )


class kvm_msrs(Structure):
    """Header of ``struct kvm_msrs``; the entries follow it (see :func:`msrs_buffer`)."""

    _fields_ = (
        ("nmsrs", c_uint32),
        ("pad", c_uint32),
    )


class kvm_pit_config(Structure):
    _fields_ = (
        ("flags", c_uint32),
        ("pad", c_uint32 * 15),
    )


KVM_PIT_SPEAKER_DUMMY = 1


class _irq_level_u(Union):
    _fields_ = (("irq", c_uint32), ("status", c_int32))


class kvm_irq_level(Structure):
    _anonymous_ = ("u",)
    _fields_ = (("u", _irq_level_u), ("level", c_uint32))


class kvm_ioeventfd(Structure):
    _fields_ = (
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    )


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_irqfd(Structure):
    _fields_ = (
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    )


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


# GSI routing (KVM_SET_GSI_ROUTING): the whole table at once, each entry an irqchip pin or an
# MSI message.
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_irq_routing_irqchip(Structure):
    _fields_ = (("irqchip", c_uint32), ("pin", c_uint32))


class kvm_irq_routing_msi(Structure):
    _fields_ = (("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32),
                ("pad", c_uint32))


class _irq_routing_u(Union):
    _fields_ = (("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi),
                ("pad", c_uint32 * 8))


class kvm_irq_routing_entry(Structure):
    _fields_ = (("gsi", c_uint32), ("type", c_uint32), ("flags", c_uint32), ("pad", c_uint32),
                ("u", _irq_routing_u))


class kvm_irq_routing(Structure):
    """The header; ``nr`` entries of :class:`kvm_irq_routing_entry` follow it."""

    _fields_ = (("nr", c_uint32), ("flags", c_uint32))


class _coalesced_pio_u(Union):
    _fields_ = (("pad", c_uint32), ("pio", c_uint32))


class kvm_coalesced_mmio_zone(Structure):
    _anonymous_ = ("u",)
    _fields_ = (("addr", c_uint64), ("size", c_uint32), ("u", _coalesced_pio_u))


class kvm_coalesced_mmio(Structure):
    _anonymous_ = ("u",)
    _fields_ = (
        ("phys_addr", c_uint64),
        ("len", c_uint32),
        ("u", _coalesced_pio_u),
        ("data", c_uint8 * 8),
    )


class kvm_coalesced_mmio_ring(Structure):
    """Header of the ring page; ``COALESCED_RING_MAX`` entries follow it."""

    _fields_ = (("first", c_uint32), ("last", c_uint32))


# The ring fills the rest of its page (virt/kvm/coalesced_mmio.h: KVM_COALESCED_MMIO_MAX).
COALESCED_RING_MAX = (PAGE_SIZE - sizeof(kvm_coalesced_mmio_ring)) // sizeof(kvm_coalesced_mmio)
# The ring's page within the vCPU mmap, in pages (arch/x86/include/uapi/asm/kvm.h).
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_PIO_PAGE_OFFSET = 1


# --- state save and restore (arch/x86/include/uapi/asm/kvm.h) ----------------------------------


class kvm_msr_list(Structure):
    """Header of ``struct kvm_msr_list``; ``nmsrs`` u32 indices follow it."""

    _fields_ = (("nmsrs", c_uint32),)


class kvm_xsave(Structure):
    # The 4 KiB legacy size: KVM_GET_XSAVE fills only that much (KVM_GET_XSAVE2 for more).
    _fields_ = (("region", c_uint32 * 1024),)


class kvm_xcr(Structure):
    _fields_ = (("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64))


class kvm_xcrs(Structure):
    _fields_ = (
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", kvm_xcr * 16),
        ("padding", c_uint64 * 16),
    )


class kvm_debugregs(Structure):
    _fields_ = (
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    )


class kvm_mp_state(Structure):
    _fields_ = (("mp_state", c_uint32),)


class kvm_lapic_state(Structure):
    _fields_ = (("regs", c_uint8 * 1024),)


class _events_exception(Structure):
    _fields_ = (("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8),
                ("pending", c_uint8), ("error_code", c_uint32))


class _events_interrupt(Structure):
    _fields_ = (("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8))


class _events_nmi(Structure):
    _fields_ = (("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8),
                ("pad", c_uint8))


class _events_smi(Structure):
    _fields_ = (("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8),
                ("latched_init", c_uint8))


class _events_triple_fault(Structure):
    _fields_ = (("pending", c_uint8),)


class kvm_vcpu_events(Structure):
    _fields_ = (
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _events_smi),
        ("triple_fault", _events_triple_fault),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    )


class kvm_clock_data(Structure):
    _fields_ = (
        ("clock", c_uint64),
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),
        ("host_tsc", c_uint64),
        ("pad", c_uint32 * 4),
    )


class kvm_pit_channel_state(Structure):
    _fields_ = (
        ("count", c_uint32),
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", ctypes.c_int64),
    )


class kvm_pit_state2(Structure):
    _fields_ = (
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    )


class _irqchip_u(Union):
    _fields_ = (("dummy", ctypes.c_char * 512),)


class kvm_irqchip(Structure):
    _fields_ = (("chip_id", c_uint32), ("pad", c_uint32), ("chip", _irqchip_u))


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_CLOCK_TSC_STABLE = 2


class _dirty_log_u(Union):
    _fields_ = (("dirty_bitmap", c_uint64), ("padding2", c_uint64))


class kvm_dirty_log(Structure):
    _anonymous_ = ("u",)
    _fields_ = (("slot", c_uint32), ("padding1", c_uint32), ("u", _dirty_log_u))


# --- struct kvm_run ------------------------------------------------------------------------


class _run_hw(Structure):
    _fields_ = (("hardware_exit_reason", c_uint64),)


class _run_fail_entry(Structure):
    _fields_ = (("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32))


class _run_ex(Structure):
    _fields_ = (("exception", c_uint32), ("error_code", c_uint32))


class _run_io(Structure):
    _fields_ = (
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    )


class _run_mmio(Structure):
    _fields_ = (
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    )


class _run_internal(Structure):
    _fields_ = (("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16))


class _run_system_event_u(Union):
    _fields_ = (("flags", c_uint64), ("data", c_uint64 * 16))


class _run_system_event(Structure):
    _anonymous_ = ("u",)
    _fields_ = (("type", c_uint32), ("ndata", c_uint32), ("u", _run_system_event_u))


class _run_exit_u(Union):
    _fields_ = (
        ("hw", _run_hw),
        ("fail_entry", _run_fail_entry),
        ("ex", _run_ex),
        ("io", _run_io),
        ("mmio", _run_mmio),
        ("internal", _run_internal),
        ("system_event", _run_system_event),
        ("padding", ctypes.c_char * 256),
    )


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(Structure):
    _anonymous_ = ("u",)
    _fields_ = (
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("u", _run_exit_u),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", ctypes.c_char * SYNC_REGS_SIZE_BYTES),
    )


# Exit reasons (include/uapi/linux/kvm.h).
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_NOTIFY = 37

EXIT_REASON_NAMES: dict[int, str] = {
    value: name[len("KVM_EXIT_") :]
    for name, value in globals().items()
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# --- capabilities ----------------------------------------------------------------------------
KVM_API_VERSION = 12
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IOEVENTFD = 36
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_MP_STATE = 14
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56

# --- ioctls ----------------------------------------------------------------------------------
# System (on /dev/kvm).
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, kvm_msr_list)

# VM.
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, kvm_irq_level)
KVM_SET_GSI_ROUTING = _iow(0x6A, kvm_irq_routing)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, kvm_coalesced_mmio_zone)
KVM_IRQFD = _iow(0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, kvm_ioeventfd)
KVM_GET_DIRTY_LOG = _iow(0x42, kvm_dirty_log)
KVM_GET_IRQCHIP = _iowr(0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, kvm_irqchip)
KVM_SET_CLOCK = _iow(0x7B, kvm_clock_data)
KVM_GET_CLOCK = _ior(0x7C, kvm_clock_data)
KVM_GET_PIT2 = _ior(0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, kvm_pit_state2)

# Guest debugging (api.rst: KVM_SET_GUEST_DEBUG, KVM_TRANSLATE).
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_guest_debug_arch(Structure):
    _fields_ = (("debugreg", c_uint64 * 8),)


class kvm_guest_debug(Structure):
    _fields_ = (("control", c_uint32), ("pad", c_uint32), ("arch", kvm_guest_debug_arch))


class kvm_translation(Structure):
    _fields_ = (("linear_address", c_uint64), ("physical_address", c_uint64),
                ("valid", c_uint8), ("writeable", c_uint8), ("usermode", c_uint8),
                ("pad", c_uint8 * 5))


# vCPU.
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, kvm_translation)
KVM_SET_GUEST_DEBUG = _iow(0x9B, kvm_guest_debug)
KVM_GET_MSRS = _iowr(0x88, kvm_msrs)
KVM_SET_MSRS = _iow(0x89, kvm_msrs)
KVM_GET_FPU = _ior(0x8C, kvm_fpu)
KVM_SET_FPU = _iow(0x8D, kvm_fpu)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, kvm_cpuid2)
KVM_GET_LAPIC = _ior(0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, kvm_lapic_state)
KVM_GET_MP_STATE = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
KVM_GET_XSAVE = _ior(0xA4, kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, kvm_xsave)
KVM_GET_XCRS = _ior(0xA6, kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, kvm_xcrs)

IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in globals().items()
    if name.startswith("KVM_")
    and isinstance(value, int)
    and (value >> _IOC_TYPESHIFT) & 0xFF == KVMIO
}


def cpuid2_buffer(nent: int) -> ctypes.Array[c_uint8]:
    """A zeroed ``struct kvm_cpuid2`` with room for ``nent`` entries, ``nent`` already set."""
    buf = (c_uint8 * (sizeof(kvm_cpuid2) + nent * sizeof(kvm_cpuid_entry2)))()
    kvm_cpuid2.from_buffer(buf).nent = nent
    return buf


def cpuid2_entries(buf: ctypes.Array[c_uint8]) -> ctypes.Array[kvm_cpuid_entry2]:
    """The entries of a buffer made by :func:`cpuid2_buffer`, as a view into it."""
    nent = kvm_cpuid2.from_buffer(buf).nent
    entries: ctypes.Array[kvm_cpuid_entry2] = (kvm_cpuid_entry2 * nent).from_buffer(
        buf, sizeof(kvm_cpuid2))
    return entries


def msrs_buffer(entries: list[tuple[int, int]]) -> ctypes.Array[c_uint8]:
    """A ``struct kvm_msrs`` holding ``(index, data)`` pairs."""
    buf = (c_uint8 * (sizeof(kvm_msrs) + len(entries) * sizeof(kvm_msr_entry)))()
    kvm_msrs.from_buffer(buf).nmsrs = len(entries)
    arr = (kvm_msr_entry * len(entries)).from_buffer(buf, sizeof(kvm_msrs))
    for slot, (index, data) in zip(arr, entries, strict=False):
        slot.index = index
        slot.data = data
    return buf


def msrs_entries(buf: ctypes.Array[c_uint8]) -> ctypes.Array[kvm_msr_entry]:
    """The entries of a buffer made by :func:`msrs_buffer`, as a view into it."""
    n = kvm_msrs.from_buffer(buf).nmsrs
    entries: ctypes.Array[kvm_msr_entry] = (kvm_msr_entry * n).from_buffer(buf, sizeof(kvm_msrs))
    return entries
