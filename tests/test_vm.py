"""The VM apart from the runner: a Vm bound and served without a Machine, and the exit loop
driven through its narrow LoopOwner contract by an owner that is not a Machine."""

from __future__ import annotations

import errno
import threading

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.iobus import Bus
from xinterface.loader import load_flat
from xinterface.memory import GuestMemory
from xinterface.runner.vcpu_loop import VcpuLoop

pytestmark = needs_kvm


def test_a_vm_is_bound_and_served_without_a_runner() -> None:
    with xi.Vm(memory=1 << 20) as vm:
        intf = xi.bind(vm)
        assert intf.vm is vm and xi.bind(vm.fd).vm is vm
        intf.copy_to(0x2000, b"no runner")
        assert intf.copy_from(0x2000, 9) == b"no runner"
        ev = intf.ioevent(0x3F8, 1, xi.XIOEventFlags.PIO)
        assert len(vm.pio_bus) == 1
        ev.deassign()
        assert len(vm.pio_bus) == 0
    assert vm.closed
    with pytest.raises(xi.XInterfaceError) as info:
        xi.bind(vm)
    assert info.value.errno == errno.EBADF


def test_machine_binds_to_its_vm() -> None:
    with xi.Machine(memory=1 << 20) as m:
        assert isinstance(m.vm, xi.Vm) and m.vm.run_control is m.control
        assert xi.bind(m).vm is xi.bind(m.fd).vm is m.vm


class MiniOwner:
    """The whole LoopOwner contract, and nothing of Machine."""

    def __init__(self, vm: xi.Vm) -> None:
        self.vm = vm
        self.stopping = False
        self.stops: list[str] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    @property
    def strict(self) -> bool:
        return True

    @property
    def debugger(self) -> None:
        return None

    @property
    def memory(self) -> GuestMemory | None:
        return self.vm.memory

    def buses(self) -> tuple[Bus, Bus]:
        return self.vm.pio_bus, self.vm.mmio_bus

    def drain_posted(self, loop: VcpuLoop) -> None:
        self.vm.drain_posted(loop.slot, loop.index)

    def request_stop(self, reason: str, exit_code: int | None = None,
                     error: BaseException | None = None) -> None:
        self.stops.append(reason)
        if error is not None:
            self.errors.append(error)
        self.stopping = True

    def park(self, loop: VcpuLoop) -> bool:
        return False  # this owner never pauses

    def vcpu_done(self, loop: VcpuLoop) -> None:
        self.done.set()


def test_the_exit_loop_needs_only_its_owner_contract(guest: Assemble) -> None:
    with xi.Vm(memory=1 << 20) as vm:
        assert vm.memory is not None and vm.ring is not None
        load_flat(vm.memory, vm.vcpus, guest("hello", MODE=16), 0x1000, "real")
        out = bytearray()
        xi.bind(vm).iorange(0xE9, 1, xi.XIOEventFlags.PIO,
                            write=lambda offset, data: out.extend(data))
        owner = MiniOwner(vm)
        loop = VcpuLoop(owner, vm.vcpus[0], vm.grace.slot(), vm.ring)
        thread = threading.Thread(target=loop.run)
        thread.start()
        assert owner.done.wait(30)
        thread.join()
        loop.release()
    assert owner.errors == [] and loop.halted
    assert bytes(out) == b"hi1"
