"""The exit decoder (kvm/exits.py) on a real vCPU, and VcpuFd.run()'s errors.

A guest assembled from tests/guests/every_exit.S makes one access of each kind; each KVM_RUN
is entered through VcpuFd.run() and its exit decoded by exits.decode(), which must say what
the guest did, with the payload where the decoded ``data_offset`` says.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.errors import KvmError
from xinterface.kvm import VcpuFd, exits, uapi
from xinterface.kvm.exits import Access, Space
from xinterface.loader.flat import load_flat


def _next(vcpu: VcpuFd) -> exits.VcpuExit:
    vcpu.run()
    return exits.decode(vcpu.run_mmap)


def _payload(vcpu: VcpuFd, access: Access, element: int = 0) -> bytes:
    at = access.data_offset + element * access.size
    return vcpu.run_mmap[at : at + access.size]


@needs_kvm
def test_decode_types_every_access_of_a_real_guest(guest: Assemble) -> None:
    with xi.Vm(memory=64 << 10) as vm:  # 0xd0010 is no RAM: MMIO exits
        vcpu = vm.vcpus[0]
        assert vm.memory is not None
        load_flat(vm.memory, [vcpu], guest("every_exit"), 0x1000, "real")

        out = _next(vcpu)
        assert isinstance(out, Access)
        assert out == Access(Space.PIO, 0x80, 1, True, 1, out.data_offset)
        assert _payload(vcpu, out) == b"\x5a"

        out16 = _next(vcpu)
        assert isinstance(out16, Access)
        assert (out16.space, out16.addr, out16.size, out16.is_write) == (Space.PIO, 0x510, 2, True)
        assert _payload(vcpu, out16) == b"\x34\x12"

        read = _next(vcpu)
        assert isinstance(read, Access)
        assert (read.space, read.addr, read.size, read.is_write, read.count) == (
            Space.PIO, 0x81, 1, False, 1)
        vcpu.run_mmap[read.data_offset] = 0x42  # served: the guest's AL

        # rep outsb: KVM hands over as many elements per exit as it emulated (kvm_pvm: one).
        sent = b""
        while len(sent) < 3:
            rep = _next(vcpu)
            assert isinstance(rep, Access)
            assert (rep.space, rep.addr, rep.size, rep.is_write) == (Space.PIO, 0x82, 1, True)
            assert 1 <= rep.count <= 3 - len(sent)
            sent += b"".join(_payload(vcpu, rep, i) for i in range(rep.count))
        assert sent == b"xyz"

        mmio = _next(vcpu)
        assert mmio == Access(Space.MMIO, 0xD0010, 4, True, 1, exits.MMIO_DATA)
        assert _payload(vcpu, mmio) == (0x11223344).to_bytes(4, "little")

        mmio_read = _next(vcpu)
        assert mmio_read == Access(Space.MMIO, 0xD0010, 4, False, 1, exits.MMIO_DATA)
        vcpu.run_mmap[exits.MMIO_DATA : exits.MMIO_DATA + 4] = b"\x01\x02\x03\x04"

        assert _next(vcpu) == exits.Halt()
        regs = vcpu.get_regs()
        assert regs.rax & 0xFFFFFFFF == 0x04030201  # the MMIO read's bytes reached the guest
        assert exits.reason(vcpu.run_mmap) == uapi.KVM_EXIT_HLT


def _page(reason: int) -> uapi.kvm_run:
    run = uapi.kvm_run()
    run.exit_reason = reason
    return run


def test_decode_reads_the_union_of_the_ctypes_layout() -> None:
    # The ctypes struct kvm_run (checked against <linux/kvm.h> in test_uapi) as the page.
    run = _page(uapi.KVM_EXIT_FAIL_ENTRY)
    run.fail_entry.hardware_entry_failure_reason = 0x80000021
    run.fail_entry.cpu = 3
    assert exits.decode(bytes(run)) == exits.FailEntry(0x80000021, 3)

    run = _page(uapi.KVM_EXIT_INTERNAL_ERROR)
    run.internal.suberror = uapi.KVM_INTERNAL_ERROR_EMULATION
    run.internal.ndata = 3
    for i, word in enumerate((1, 2, 3, 4)):
        run.internal.data[i] = word
    assert exits.decode(bytes(run)) == exits.InternalError(uapi.KVM_INTERNAL_ERROR_EMULATION,
                                                           (1, 2, 3))
    run.internal.ndata = 1000  # never more words than the union holds
    decoded = exits.decode(bytes(run))
    assert isinstance(decoded, exits.InternalError) and len(decoded.data) == 16

    run = _page(uapi.KVM_EXIT_SYSTEM_EVENT)
    run.system_event.type = uapi.KVM_SYSTEM_EVENT_RESET
    assert exits.decode(bytes(run)) == exits.SystemEvent(uapi.KVM_SYSTEM_EVENT_RESET)

    run = _page(uapi.KVM_EXIT_UNKNOWN)
    run.hw.hardware_exit_reason = 0x7B
    assert exits.decode(bytes(run)) == exits.Unknown(0x7B)

    for reason, kind in ((uapi.KVM_EXIT_HLT, exits.Halt), (uapi.KVM_EXIT_INTR, exits.Interrupted),
                         (uapi.KVM_EXIT_SHUTDOWN, exits.Shutdown)):
        assert type(exits.decode(bytes(_page(reason)))) is kind

    other = exits.decode(bytes(_page(uapi.KVM_EXIT_X86_RDMSR)))
    assert other == exits.Other(uapi.KVM_EXIT_X86_RDMSR) and other.name == "X86_RDMSR"

    run = _page(uapi.KVM_EXIT_MMIO)
    run.mmio.phys_addr = 0xFEE0_0000
    run.mmio.len = 8
    run.mmio.is_write = 1
    page = bytes(run)
    access = exits.decode(page)
    assert access == Access(Space.MMIO, 0xFEE0_0000, 8, True, 1, exits.MMIO_DATA)
    assert uapi.kvm_run.u.offset + uapi._run_mmio.data.offset == exits.MMIO_DATA
    assert ctypes.sizeof(uapi.kvm_run) >= exits.MMIO_DATA + 8


def test_space_is_the_word_errors_and_traces_use() -> None:
    # Equal to the old strings, so errors' .space and every "pio" comparison still hold.
    assert [Space.PIO, Space.MMIO] == ["pio", "mmio"]
    assert f"{Space.PIO:<5}|{Space.MMIO}" == "pio  |mmio"
    assert Space("pio") is Space.PIO and Space.of_pio_flag(1) is Space.PIO
    assert Space.of_pio_flag(0) is Space.MMIO
    assert Space.PIO.where(0x3F8) == "port 0x3f8"
    assert Space.MMIO.where(0xD0000) == "MMIO address 0xd0000"


@needs_kvm
def test_run_raises_interrupted_error_for_immediate_exit(guest: Assemble) -> None:
    with xi.Vm(memory=1 << 20) as vm:
        vcpu = vm.vcpus[0]
        assert vm.memory is not None
        load_flat(vm.memory, [vcpu], guest("spin", mode="protected"), 0x1000, "protected")
        vcpu.set_immediate_exit(True)
        with pytest.raises(InterruptedError) as info:
            vcpu.run()
        exc = info.value
        assert isinstance(exc, KvmError) and isinstance(exc, OSError)
        assert exc.errno == errno.EINTR and exc.ioctl == "KVM_RUN"
        assert "KVM_RUN" in str(exc)
        # Not retried into the guest: its loop counter (ECX) never moved.
        assert vcpu.get_regs().rcx == 0


def test_run_reports_other_failures_as_kvm_error_with_the_errno(tmp_path: Path) -> None:
    # KVM_RUN on a file that is no vCPU: the kernel's ENOTTY, as a plain KvmError.
    path = tmp_path / "not-a-vcpu"
    path.write_bytes(b"\0" * mmap.PAGESIZE)
    fd = os.open(path, os.O_RDWR)
    try:
        vcpu = VcpuFd(fd, 0, mmap.PAGESIZE)
        with pytest.raises(KvmError) as info:
            vcpu.run()
        assert info.value.errno == errno.ENOTTY and info.value.ioctl == "KVM_RUN"
        assert not isinstance(info.value, InterruptedError | BlockingIOError)
    finally:
        vcpu.close()
