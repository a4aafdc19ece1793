"""Each state ioctl pair round-trips under this host's KVM: what KVM_GET_* gives, KVM_SET_*
takes, and the next KVM_GET_* gives the same bytes (docs/snapshot.md lists the results)."""

from __future__ import annotations

import ctypes

import pytest

from tests.conftest import needs_kvm
from xinterface import Machine
from xinterface.kvm import state, uapi
from xinterface.kvm.system import Kvm

from .counting import image

pytestmark = needs_kvm


@pytest.mark.parametrize("piece", (*state.VCPU_PIECES, state.FPU), ids=lambda p: p.name)
def test_vcpu_piece_round_trips(piece: state.Piece) -> None:
    with Machine(memory=4 << 20, irqchip=True) as machine:
        machine.load_flat(image(), gpa=0x1000, mode="protected")
        vcpu = machine.vcpus[0].vcpu
        first = vcpu.get_state(piece.get, piece.ctype)
        vcpu.set_state(piece.set, piece.ctype.from_buffer_copy(bytes(first)))
        assert bytes(vcpu.get_state(piece.get, piece.ctype)) == bytes(first)


def test_msrs_kvm_lists_round_trip() -> None:
    with Kvm() as kvm:
        indices = kvm.get_msr_index_list()
    assert state.MSR_IA32_TSC in indices
    with Machine(memory=4 << 20, irqchip=True) as machine:
        vcpu = machine.vcpus[0].vcpu
        saved = state.save_vcpu(vcpu, state.vcpu_pieces(True, True), indices)
        values = state.decode_msrs(saved["msrs"])
        state.restore_vcpu(vcpu, state.vcpu_pieces(True, True), saved)
        again = vcpu.get_msrs(list(values))
        # The TSC runs on between the two reads; every other MSR reads back as set.
        assert {k: v for k, v in again.items() if k != state.MSR_IA32_TSC} == {
            k: v for k, v in values.items() if k in again and k != state.MSR_IA32_TSC}


def test_vm_state_round_trips() -> None:
    with Machine(memory=4 << 20, irqchip=True) as machine:
        vmfd = machine.vm.vmfd
        saved = state.save_vm(vmfd, True)
        state.restore_vm(vmfd, True, saved)
        again = state.save_vm(vmfd, True)
        for name in ("pic_master", "pic_slave", "ioapic"):
            assert again[name] == saved[name], name
        # KVM_SET_PIT2 loads each channel's count anew, stamping count_load_time with the
        # host's time (arch/x86/kvm/i8254.c, kvm_pit_load_count); the rest reads back as set.
        pits = [uapi.kvm_pit_state2.from_buffer_copy(again["pit"]),
                uapi.kvm_pit_state2.from_buffer_copy(saved["pit"])]
        for pit in pits:
            for channel in pit.channels:
                channel.count_load_time = 0
        assert bytes(pits[0]) == bytes(pits[1])
        clock = uapi.kvm_clock_data.from_buffer_copy(again["clock"])
        # KVM_SET_CLOCK set the clock back to the saved value; it has run on only since.
        assert clock.clock >= uapi.kvm_clock_data.from_buffer_copy(saved["clock"]).clock


def test_a_piece_of_the_wrong_size_is_refused_before_any_is_set() -> None:
    with Machine(memory=4 << 20) as machine:
        vcpu = machine.vcpus[0].vcpu
        pieces = state.vcpu_pieces(False, True)
        saved = state.save_vcpu(vcpu, pieces, [state.MSR_IA32_TSC])
        regs = bytes(vcpu.get_regs())
        saved["regs"] = saved["regs"][:-1]
        saved["sregs"] = bytes(ctypes.sizeof(uapi.kvm_sregs))
        with pytest.raises(OSError) as info:
            state.restore_vcpu(vcpu, pieces, saved)
        assert info.value.errno == 22 and "regs" in str(info.value)
        assert bytes(vcpu.get_regs()) == regs
