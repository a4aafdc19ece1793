"""The pytest plugin (entry point ``pytest11``): fixtures for testing your own guests.

``xi_run(image, ...)`` runs an image (a GNU as source, an ELF, a flat binary) on the bare
machine of ``xinterface run``; ``xi_boot(spec)`` boots a board from a
:class:`~xinterface.spec.MachineSpec`. Both give a :class:`~xinterface.testing.Guest`, not
yet started: ``guest.console.expect(b"login:")``, ``guest.console.send(b"root\\n")``,
``guest.wait()`` for the result (``reason``, ``exit_code``, ``exits``). Every machine is
closed after the test, and the test fails if it left a file descriptor or a thread behind.
``xi_machine(...)`` is a bare :class:`~xinterface.runner.machine.Machine`, closed and
checked the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .build import build, build_machine
from .runner.machine import Machine
from .spec import Consoles, MachineSpec
from .testing import Console, Guest, Leaks

MakeMachine = Callable[..., Machine]
RunImage = Callable[..., Guest]
BootSpec = Callable[..., Guest]


class _Closer:
    """The machines of one test: closed at its end, then the leak check."""

    def __init__(self) -> None:
        self.leaks = Leaks()
        self.machines: list[Machine] = []
        self.guests: list[Guest] = []

    def close(self) -> None:
        for guest in self.guests:
            guest.stop()
        for machine in reversed(self.machines):
            machine.close()
        left = self.leaks.check()
        if left:
            pytest.fail("the test left behind: " + "; ".join(left), pytrace=False)


@pytest.fixture
def _xi_closer() -> Iterator[_Closer]:
    closer = _Closer()
    yield closer
    closer.close()


@pytest.fixture
def xi_machine(_xi_closer: _Closer) -> MakeMachine:
    """``xi_machine(memory=..., vcpus=..., **kwargs)``: a Machine closed after the test."""

    def make(*args: Any, **kwargs: Any) -> Machine:
        machine = Machine(*args, **kwargs)
        _xi_closer.machines.append(machine)
        return machine

    return make


@pytest.fixture
def xi_run(_xi_closer: _Closer) -> RunImage:
    """``xi_run(image, gpa=None, mode=None, memory=16 MiB, vcpus=1)``: ``image`` on the bare
    machine with its debug ports (0xe9 is ``debugcon``, 0xf4 the exit port) and COM1
    (``console``)."""
    from .frontend.image import load_image

    def run(image: str | os.PathLike[str], *, gpa: int | None = None, mode: str | None = None,
            memory: int = 16 << 20, vcpus: int = 1) -> Guest:
        guest_image = load_image(image, gpa=gpa, mode=mode, memory=memory)
        spec = MachineSpec(memory=memory, vcpus=vcpus, board=None, irqchip=False,
                           consoles=Consoles(uart=True))
        console, debugcon = Console("COM1"), Console("debug console")
        machine = build_machine(spec, console=debugcon)  # type: ignore[arg-type]
        _xi_closer.machines.append(machine)
        machine.load_flat(guest_image.data, gpa=guest_image.gpa, mode=guest_image.mode)
        built = build(spec, machine, serial=console)
        console.feed = built.feed
        guest = Guest(machine, console, debugcon)
        _xi_closer.guests.append(guest)
        return guest

    return run


@pytest.fixture
def xi_boot(_xi_closer: _Closer) -> BootSpec:
    """``xi_boot(spec)``: the board ``spec`` describes, its firmware or kernel loaded, COM1
    as ``console`` and the firmware's debug console (0x402) as ``debugcon``."""

    def boot(spec: MachineSpec) -> Guest:
        console, debugcon = Console("COM1"), Console("debug console")
        machine = build_machine(spec)
        _xi_closer.machines.append(machine)
        built = build(spec, machine, debugcon=debugcon, serial=console)
        console.feed = built.feed
        guest = Guest(machine, console, debugcon, built.platform)
        _xi_closer.guests.append(guest)
        return guest

    return boot


# A session-scoped booted snapshot, restored for each test, comes with snapshot/restore:
# it will be a fixture here over the builder's restore of a recorded description.
