"""The pytest plugin (entry point ``pytest11``): fixtures for testing your own guests.

``xi_run(image, ...)`` runs an image (a GNU as source, an ELF, a flat binary) on the bare
machine of ``xinterface run``; ``xi_boot(spec)`` boots a board from a
:class:`~xinterface.spec.MachineSpec`. Both give a :class:`~xinterface.testing.Guest`, not
yet started: ``guest.console.expect(b"login:")``, ``guest.console.send(b"root\\n")``,
``guest.wait()`` for the result (``reason``, ``exit_code``, ``exits``). Every machine is
closed after the test, and the test fails if it left a file descriptor or a thread behind.
``xi_machine(...)`` is a bare :class:`~xinterface.runner.machine.Machine`, closed and
checked the same way.

``xi_snapshot(spec_or_image, at=b"...")`` (session-scoped) boots once per session until a
console shows ``at``, snapshots there and gives the snapshot's directory; ``xi_restore(path)``
gives each test a fresh :class:`~xinterface.testing.Guest` restored from it.
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
TakeSnapshot = Callable[..., str]
Restore = Callable[..., Guest]


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


def _image_machine(image: str | os.PathLike[str], gpa: int | None, mode: str | None,
                   memory: int, vcpus: int) -> tuple[MachineSpec, Callable[..., Any]]:
    """The bare machine of ``xi_run`` for ``image``: its description, and how to load it."""
    from .frontend.image import load_image

    guest_image = load_image(image, gpa=gpa, mode=mode, memory=memory)
    spec = MachineSpec(memory=memory, vcpus=vcpus, board=None, irqchip=False,
                       consoles=Consoles(uart=True))

    def load(machine: Machine) -> None:
        machine.load_flat(guest_image.data, gpa=guest_image.gpa, mode=guest_image.mode)

    return spec, load


@pytest.fixture(scope="session")
def xi_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TakeSnapshot]:
    """``xi_snapshot(spec_or_image, at=b"login:", timeout=120, **image_options)``: boot the
    board ``spec`` describes (a :class:`~xinterface.spec.MachineSpec`), or run ``image`` on
    ``xi_run``'s bare machine (``gpa``, ``mode``, ``memory``, ``vcpus`` as there), until
    ``at`` appears on COM1 or the debug console; snapshot it right there, close it, and give
    the snapshot's directory. Once per session for the same arguments: every later call
    gives the same snapshot. ``AssertionError`` with what the consoles showed if ``at`` did
    not come."""
    from .frontend.outputs import Relay
    from .frontend.snapshot_on import SnapshotOn

    taken: dict[tuple[object, ...], str] = {}
    root = tmp_path_factory.mktemp("xi_snapshot")

    def take(what: MachineSpec | str | os.PathLike[str], *, at: bytes | str,
             timeout: float = 120.0, gpa: int | None = None, mode: str | None = None,
             memory: int = 16 << 20, vcpus: int = 1) -> str:
        text = at.decode() if isinstance(at, bytes) else at
        key = (what if isinstance(what, MachineSpec) else os.path.abspath(what), text, gpa,
               mode, memory, vcpus)
        if key in taken:
            return taken[key]
        if isinstance(what, MachineSpec):
            spec, load = what, None
        else:
            spec, load = _image_machine(what, gpa, mode, memory, vcpus)
        directory = str(root / f"snapshot-{len(taken)}")
        console, debugcon = Console("COM1"), Console("debug console")
        # The bare machine's debug console is its own port 0xe9, made with the machine: the
        # watcher, which needs the machine, goes behind the relay after.
        relay = Relay(debugcon) if load is not None else None
        with build_machine(spec, console=relay) as machine:  # type: ignore[arg-type]
            taker = SnapshotOn(machine, text, directory, continue_run=False)
            if relay is not None and load is not None:
                load(machine)
                relay.target = taker.watch(debugcon)
            build(spec, machine, debugcon=taker.watch(debugcon), serial=taker.watch(console))
            taker.start()
            try:
                result = machine.run(timeout=timeout)
            finally:
                taker.close()
        if not taker.taken:
            raise AssertionError(f"xi_snapshot: {text!r} did not appear (the run ended: "
                                 f"{result.reason}); COM1 showed:\n{console.seen!r}\ndebug "
                                 f"console:\n{debugcon.seen!r}")
        taken[key] = directory
        return directory

    yield take


@pytest.fixture
def xi_restore(_xi_closer: _Closer) -> Restore:
    """``xi_restore(path)``: a :class:`~xinterface.testing.Guest` restored from the snapshot
    in ``path`` (``xi_snapshot``'s, or any a machine built from a description wrote), not
    yet started: it goes on from the saved instruction, its own copy of the memory (the
    snapshot's files are mapped copy-on-write, so every test starts from the same state)."""
    from .snapshot import restore_built

    def restore(path: str | os.PathLike[str]) -> Guest:
        console, debugcon = Console("COM1"), Console("debug console")
        # The debug console of a bare machine is port 0xe9, of a board port 0x402: either
        # is ``debugcon``.
        machine, built = restore_built(path, console=debugcon,  # type: ignore[arg-type]
                                       debugcon=debugcon, serial=console)
        _xi_closer.machines.append(machine)
        console.feed = built.feed
        guest = Guest(machine, console, debugcon, built.platform)
        _xi_closer.guests.append(guest)
        return guest

    return restore
