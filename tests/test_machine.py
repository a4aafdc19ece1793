"""The Machine on real KVM: CPU modes, exits, stop/timeout, errors, teardown."""

from __future__ import annotations

import errno
import io
import os
import threading
import time

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.kvm import Kvm

pytestmark = needs_kvm

MODE_BITS = {"real": 16, "protected": 32, "long": 64}


def run_guest(image: bytes, *, mode: str = "real", gpa: int = 0x1000, memory: int = 1 << 20,
              vcpus: int = 1, timeout: float = 10.0, **kw: object) -> tuple[xi.RunResult, bytes]:
    out = io.BytesIO()
    with xi.Machine(memory=memory, vcpus=vcpus, console=out, **kw) as m:  # type: ignore[arg-type]
        m.load_flat(image, gpa=gpa, mode=mode)
        return m.run(timeout=timeout), out.getvalue()


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_each_mode_runs_to_hlt(guest: Assemble, mode: str) -> None:
    image = guest("hello", mode=mode, MODE=MODE_BITS[mode])
    result, out = run_guest(image, mode=mode, memory=4 << 20)
    assert out == b"hi" + bytes([ord("0") + MODE_BITS[mode] // 16])
    assert result.reason == "hlt"
    assert result.exit_code is None
    assert result.exits["io"] == 3
    assert result.exits["hlt"] == 1


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_each_mode_starts_with_the_caches_on_as_firmware_leaves_them(guest: Assemble,
                                                                     mode: str) -> None:
    image = guest("hello", mode=mode, MODE=MODE_BITS[mode])
    with xi.Machine(memory=4 << 20, console=io.BytesIO()) as m:
        assert m.vcpus[0].vcpu.get_sregs().cr0 & (3 << 29) == 3 << 29   # reset: CD and NW
        m.load_flat(image, gpa=0x1000, mode=mode)
        cr0 = m.vcpus[0].vcpu.get_sregs().cr0
    assert cr0 & (3 << 29) == 0 and cr0 & 1 == (mode != "real")


@pytest.mark.parametrize("gpa", [0x1000, 0x7C00, 0x20000])
def test_protected_mode_image_anywhere(guest: Assemble, gpa: int) -> None:
    result, out = run_guest(guest("hello", gpa=gpa, mode="protected", MODE=32), mode="protected",
                            gpa=gpa)
    assert (result.reason, out) == ("hlt", b"hi2")


def test_long_mode_tables_cover_4gib(guest: Assemble) -> None:
    # The long-mode example touches 0xfee00000: mapped by the loader's tables, so it reaches
    # the VMM as an MMIO exit instead of a page fault (which would triple-fault).
    result, out = run_guest(guest("hello-long", mode="long"), mode="long", memory=2 << 20)
    assert out == b"Hello from long mode\n"
    assert result.exits["mmio"] == 1


@pytest.mark.parametrize("code", [0, 1, 0x7F])
def test_debug_exit_status(guest: Assemble, code: int) -> None:
    result, _ = run_guest(guest("exit_code", CODE=code))
    assert result.reason == "exit"
    assert result.exit_code == (code << 1) | 1


def test_string_io_element_by_element(guest: Assemble) -> None:
    # rep insb/insw arrive from KVM with count > 1 (one exit for the whole string); each
    # element is served by the bus and written back in place.
    result, out = run_guest(guest("string_io"))
    assert out == b"\xff" * 4 + b"\xe9" * 4 + b"ABCDEF"
    assert result.reason == "hlt"


def test_in_and_mmio_reads_write_results_back(guest: Assemble) -> None:
    _, out = run_guest(guest("io_mix"), mode="protected")
    assert out == b"\xe9" + b"\xff" * (1 + 2 + 4 + 4 + 4)


def test_strict_mode_stops_on_unhandled_access(guest: Assemble) -> None:
    with pytest.raises(xi.GuestIOError) as info:
        run_guest(guest("io_mix"), mode="protected", strict=True)
    assert info.value.space == "pio"
    assert info.value.addr == 0x3FF
    assert info.value.length == 1
    assert "unhandled 1-byte read from port 0x3ff" in str(info.value)


def test_each_vcpu_sees_its_own_apic_id(guest: Assemble) -> None:
    result, out = run_guest(guest("vcpu_id"), mode="protected", vcpus=2)
    assert sorted(out) == [ord("A"), ord("B")]
    assert result.reason == "hlt"
    assert result.exits["hlt"] == 2


def test_timeout_ends_a_guest_that_never_halts(guest: Assemble) -> None:
    result, _ = run_guest(guest("spin"), mode="protected", timeout=0.3)
    assert result.reason == "timeout"


def test_stop_from_another_thread_then_resume(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20, vcpus=2) as m:
        m.load_flat(guest("spin"), gpa=0x1000, mode="protected")
        timer = threading.Timer(0.2, m.stop)
        timer.start()
        assert m.run(timeout=30).reason == "stopped"
        timer.join()
        ecx = m.vcpus[0].vcpu.get_regs().rcx
        assert ecx > 0  # the guest ran its loop before the stop
        # A second run resumes where the vCPUs were.
        assert m.run(timeout=0.2).reason == "timeout"
        assert m.vcpus[0].vcpu.get_regs().rcx > ecx


def test_triple_fault_raises_guest_error_with_registers(guest: Assemble) -> None:
    with pytest.raises(xi.GuestError) as info:
        run_guest(guest("triple_fault"), mode="protected")
    assert "triple fault" in str(info.value)
    assert info.value.regs["rbx"] == 0xDEAD
    assert info.value.vcpu == 0
    assert "rip=" in str(info.value)


def test_close_twice_and_use_after_close(guest: Assemble) -> None:
    m = xi.Machine(memory=1 << 20)
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(xi.XInterfaceError) as info:
        m.run()
    assert info.value.errno == errno.EBADF
    with pytest.raises(xi.XInterfaceError):
        m.load_flat(guest("hello", MODE=16))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_500_machines_leak_no_fd_and_no_thread(guest: Assemble) -> None:
    image = guest("hello", MODE=16)
    # One machine first, so lazily created process-wide state is not counted as a leak.
    run_guest(image)
    fds, threads = _fds(), threading.active_count()
    for i in range(500):
        with xi.Machine(memory=64 << 10) as m:
            if i % 50 == 0:  # running costs ~ms each: run a tenth of them
                m.load_flat(image, gpa=0x1000, mode="real")
                assert m.run(timeout=10).reason == "hlt"
    assert _fds() == fds
    assert threading.active_count() == threads


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [0, -1, 100_000])
def test_bad_vcpu_count(vcpus: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=1 << 20, vcpus=vcpus)
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == "vcpus"
    assert "vcpus" in str(info.value)


@pytest.mark.parametrize("memory", [0, 5000, 4097, -4096])
def test_memory_not_a_multiple_of_4k(memory: int) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=memory)
    assert info.value.errno == errno.EINVAL
    assert "multiple of 4 KiB" in str(info.value)


def test_memory_more_than_the_host_has() -> None:
    fds = _fds()
    too_much = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 2 // 4096 * 4096
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=too_much)
    assert info.value.errno == errno.ENOMEM
    assert _fds() == fds  # nothing half-built stays open


def test_unknown_mode(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_flat(guest("hello", MODE=16), mode="virtual8086")
    assert info.value.errno == errno.EINVAL
    assert info.value.argument == "mode"


def test_image_larger_than_memory() -> None:
    with xi.Machine(memory=64 << 10) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_flat(b"\x90" * (128 << 10), gpa=0, mode="protected")
    assert info.value.errno == errno.EFAULT
    assert "does not fit" in str(info.value)


def test_image_outside_memory() -> None:
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_flat(b"\xf4", gpa=0x200000, mode="protected")
    assert info.value.errno == errno.EFAULT


def test_real_mode_image_above_64k() -> None:
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_flat(b"\xf4", gpa=0x10000, mode="real")
    assert info.value.argument == "gpa"


def test_missing_dev_kvm() -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        Kvm("/nonexistent/kvm")
    assert info.value.errno == errno.ENOENT
    assert "does not exist" in str(info.value)


def test_run_while_running_is_refused(guest: Assemble) -> None:
    with xi.Machine(memory=1 << 20) as m:
        m.load_flat(guest("spin"), gpa=0x1000, mode="protected")
        worker = threading.Thread(target=m.run, kwargs={"timeout": 2})
        worker.start()
        deadline = time.monotonic() + 2
        while not m.running and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(xi.XInterfaceError) as info:
            m.run(timeout=1)
        assert info.value.errno == errno.EBUSY
        m.stop()
        worker.join()


def test_cpu_template_for_every_vcpu() -> None:
    from xinterface.loader import cpuid

    with Kvm() as kvm:
        supported = kvm.get_supported_cpuid()
    with xi.Machine(memory=1 << 20, vcpus=2, cpu="baseline") as m:
        for index, loop in enumerate(m.vcpus):
            given = cpuid.baseline(supported, index)
            have = loop.vcpu.get_cpuid2()
            # The leaves every host measured keeps as set (kvm_pvm reports its own leaf 1
            # ECX/EDX whatever the VMM set: docs/linux.md).
            for function in (0x40000001, 0x80000008):
                assert cpuid.leaf(have, function) == cpuid.leaf(given, function)
            assert cpuid.leaf(have, 1)[1] >> 24 == index    # type: ignore[index]
    with xi.Machine(memory=1 << 20) as m:
        # No template: KVM's supported set, which the baseline narrows (PV features, ...).
        assert cpuid.leaf(m.vcpus[0].vcpu.get_cpuid2(), 0x40000001) != cpuid.leaf(
            cpuid.baseline(supported, 0), 0x40000001)


def test_unknown_cpu_template_creates_nothing() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(xi.XInterfaceError) as info:
        xi.Machine(memory=1 << 20, cpu="pentium")
    assert (info.value.errno, info.value.argument) == (errno.EINVAL, "cpu")
    assert "baseline" in str(info.value)
    assert len(os.listdir("/proc/self/fd")) == before
