"""The one decoder of a vCPU's ``kvm_run`` page: what ``KVM_RUN`` came back for, typed.

After ``KVM_RUN`` returns, ``exit_reason`` and the union after it describe the exit
(Documentation/virt/kvm/api.rst, "The kvm_run structure"). :func:`decode` reads them into one
of the exit classes below, the way kvm-ioctls hands Rust VMMs a ``VcpuExit``. A guest access is
an :class:`Access` whatever its kind: for a port access ``data_offset`` points at the PIO page
(``io.data_offset``, ``count`` elements of ``size`` bytes), for MMIO at ``mmio.data`` inside
``kvm_run`` itself (one element), so a server reads and fills both the same way.

The exit loop's hot path cannot afford an object per exit (about 0.3 us on an exit of a few
us): it reads the same layouts through :data:`IO` and :data:`MMIO` at :data:`UNION` and the
reason through :data:`REASON_WORD`, as plain tuples and ints, and hands everything else to
:func:`decode`. The layouts are written here once; ``tests/kvm`` checks them against the
ctypes ``struct kvm_run`` of :mod:`.uapi`.
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass

from . import uapi


class Space(str, enum.Enum):
    """An I/O address space, the kernel's ``enum kvm_bus`` (``KVM_MMIO_BUS``, ``KVM_PIO_BUS``).

    A ``str`` enum: a space compares equal to, formats and prints as ``"mmio"``/``"pio"``, the
    words errors and traces have always used for it.
    """

    MMIO = "mmio"
    PIO = "pio"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of_pio_flag(cls, pio: int) -> Space:
        """The space of a coalesced-ring entry (``struct kvm_coalesced_mmio``'s ``pio``)."""
        return cls.PIO if pio else cls.MMIO

    @property
    def pio(self) -> bool:
        return self is Space.PIO

    def where(self, addr: int) -> str:
        """``addr`` as errors name it: ``port 0x..`` or ``MMIO address 0x..``."""
        return f"port {addr:#x}" if self is Space.PIO else f"MMIO address {addr:#x}"


# Offsets and layouts of struct kvm_run (<linux/kvm.h>), for the hot path and decode().
REASON_WORD = uapi.kvm_run.exit_reason.offset // 4  # index into a 32-bit view of the page
UNION = uapi.kvm_run.u.offset
IO = struct.Struct("<BBHIQ")      # io: direction, size, port, count, data_offset
MMIO = struct.Struct("<Q8sIB")    # mmio: phys_addr, data[8], len, is_write
MMIO_DATA = UNION + 8             # mmio.data, where a read's bytes go back
_REASON = struct.Struct("<I")
_FAIL_ENTRY = struct.Struct("<QI")       # hardware_entry_failure_reason, cpu
_INTERNAL = struct.Struct("<II16Q")      # suberror, ndata, data[16]
_SYSTEM_EVENT = struct.Struct("<II")     # type, ndata
_HW = struct.Struct("<Q")                # hardware_exit_reason
_DEBUG = struct.Struct("<IIQQQ")         # kvm_debug_exit_arch: exception, pad, pc, dr6, dr7


@dataclass(frozen=True, slots=True)
class Access:
    """``KVM_EXIT_IO`` or ``KVM_EXIT_MMIO``: ``count`` accesses of ``size`` bytes at ``addr``.

    The payload (a write) or the place for the result (a read) is at ``data_offset`` in the
    ``kvm_run`` mapping, element ``i`` at ``data_offset + i * size``.
    """

    space: Space
    addr: int
    size: int
    is_write: bool
    count: int
    data_offset: int


@dataclass(frozen=True, slots=True)
class Halt:
    """``KVM_EXIT_HLT``: the vCPU executed HLT with no interrupt to wake it."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """``KVM_EXIT_INTR``: a signal ended ``KVM_RUN`` before the guest ran further."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """``KVM_EXIT_SHUTDOWN``: a triple fault."""


@dataclass(frozen=True, slots=True)
class FailEntry:
    """``KVM_EXIT_FAIL_ENTRY``: VM entry failed for ``hardware_reason`` on host ``cpu``."""

    hardware_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalError:
    """``KVM_EXIT_INTERNAL_ERROR``: ``data`` holds the ``ndata`` words (at most 16)."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """``KVM_EXIT_SYSTEM_EVENT``: ``kind`` is ``KVM_SYSTEM_EVENT_SHUTDOWN``, ``_RESET``, ..."""

    kind: int


@dataclass(frozen=True, slots=True)
class Debug:
    """``KVM_EXIT_DEBUG`` (guest debugging on): ``exception`` 1 (#DB: a step or a hardware
    breakpoint, which ``dr6`` names) or 3 (#BP), at ``pc``."""

    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """``KVM_EXIT_UNKNOWN``: the hardware exit reason KVM did not handle."""

    hardware_reason: int


@dataclass(frozen=True, slots=True)
class Other:
    """Any other exit reason; this VMM enables none of them, so it ends the run."""

    reason: int

    @property
    def name(self) -> str:
        return uapi.EXIT_REASON_NAMES.get(self.reason, "unknown")


VcpuExit = (Access | Halt | Interrupted | Shutdown | FailEntry | InternalError | SystemEvent
            | Debug | Unknown | Other)

# What decode() reads: the vCPU's kvm_run mapping, or a copy of it.
RunPage = mmap.mmap | bytes | bytearray | memoryview

_HALT, _INTERRUPTED, _SHUTDOWN = Halt(), Interrupted(), Shutdown()


def reason(run: RunPage) -> int:
    """The raw ``exit_reason`` of ``run`` (a vCPU's ``kvm_run`` mapping)."""
    code: int = _REASON.unpack_from(run, uapi.kvm_run.exit_reason.offset)[0]
    return code


def decode(run: RunPage) -> VcpuExit:
    """The exit the ``kvm_run`` mapping ``run`` describes, as one of this module's classes."""
    code = reason(run)
    if code == uapi.KVM_EXIT_IO:
        direction, size, port, count, offset = IO.unpack_from(run, UNION)
        return Access(Space.PIO, port, size, direction == uapi.KVM_EXIT_IO_OUT, count, offset)
    if code == uapi.KVM_EXIT_MMIO:
        addr, _, size, is_write = MMIO.unpack_from(run, UNION)
        return Access(Space.MMIO, addr, size, bool(is_write), 1, MMIO_DATA)
    if code == uapi.KVM_EXIT_HLT:
        return _HALT
    if code == uapi.KVM_EXIT_INTR:
        return _INTERRUPTED
    if code == uapi.KVM_EXIT_SHUTDOWN:
        return _SHUTDOWN
    if code == uapi.KVM_EXIT_FAIL_ENTRY:
        return FailEntry(*_FAIL_ENTRY.unpack_from(run, UNION))
    if code == uapi.KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata, *data = _INTERNAL.unpack_from(run, UNION)
        return InternalError(suberror, tuple(data[:ndata]))
    if code == uapi.KVM_EXIT_SYSTEM_EVENT:
        kind, _ = _SYSTEM_EVENT.unpack_from(run, UNION)
        return SystemEvent(kind)
    if code == uapi.KVM_EXIT_DEBUG:
        exception, _, pc, dr6, dr7 = _DEBUG.unpack_from(run, UNION)
        return Debug(exception, pc, dr6, dr7)
    if code == uapi.KVM_EXIT_UNKNOWN:
        return Unknown(_HW.unpack_from(run, UNION)[0])
    return Other(code)
