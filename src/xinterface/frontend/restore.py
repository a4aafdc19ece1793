"""``xinterface restore DIR``: a snapshot written by ``--snapshot-on`` (or by QMP, or by
:func:`xinterface.snapshot.snapshot`) continued in this process, its consoles sent where
this command line says (they are no part of the snapshot).

Everything the snapshot's files say is checked before a vCPU runs (a restore raises
:class:`~xinterface.snapshot.SnapshotError`, one line): another format version, an edited
or truncated manifest, a memory file missing or changed, a disk image gone. The exit
status is the guest's, as for ``run`` and ``boot``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

from .report import EXIT_TIMEOUT, EXIT_USAGE, fail, reported
from .values import NONE, Target

if TYPE_CHECKING:
    from ..build import Built
    from ..devices.output import Output
    from ..runner.machine import Machine


def restore_machine(directory: str, *, console: Output | None, debugcon: Output | None,
                    serial: Output | None) -> tuple[Machine, Built]:
    """The machine of ``directory`` with its board built again from the description the
    snapshot recorded, its consoles writing where given; paused at the saved instruction."""
    from ..snapshot import restore_built

    return restore_built(directory, console=console,  # type: ignore[arg-type]
                         debugcon=debugcon, serial=serial)


def restore_run(directory: str, *, serial: Target | None, debugcon: Target,
                until: str | None, timeout: float, debug: bool, qmp: str | None = None,
                log_level: str = "warning", metrics: str | None = None) -> NoReturn:
    """Restore ``directory`` and run it until it exits, halts, ``until`` appears on a
    console, or ``timeout`` seconds pass (0: no limit); exit with the guest's status.
    ``serial`` None: COM1 (if the snapshot has one) to stdout."""
    from ..devices.output import Until
    from ..observe.logs import configure
    from .outputs import STDOUT, Relay, Stdout, stream_for
    from .session import Session

    configure(log_level)
    stdout = Stdout()
    given_serial = serial
    serial = serial if serial is not None else Target(STDOUT)
    watchers: list[Until] = []
    with reported(stdout, debug):
        # The consoles are chosen before the machine exists; what stops it on --until, and
        # the terminal console, need the machine: they are put behind the relays after.
        relays = [Relay(stdout), Relay(stream_for(debugcon, stdout)), Relay(stdout)]
        machine, built = restore_machine(directory, console=relays[0], debugcon=relays[1],
                                         serial=relays[2])
        with machine:
            if given_serial is not None and given_serial.kind != NONE and built.feed is None:
                fail(f"--serial: the snapshot {directory} has no serial port (COM1)",
                     status=EXIT_USAGE)
            session = Session(machine, serial, stdout, qmp=qmp, metrics=metrics)
            session.platform = built.platform
            relays[2].target = session.serial_output()
            if until is not None:
                watchers = [Until(relay.target, until.encode(), machine.stop)
                            for relay in relays]
                for relay, watcher in zip(relays, watchers, strict=True):
                    relay.target = watcher
            if built.feed is not None:
                session.connect(built.feed)
            result = session.run(timeout or None)
    session.check_console()
    if any(w.matched for w in watchers) or session.quit_requested:
        sys.exit(0)
    if result.reason == "timeout":
        wanted = f" without {until!r} appearing" if until else ""
        fail(f"the restored guest was still running after {timeout:g} s{wanted}; raise "
             "--timeout", status=EXIT_TIMEOUT)
    if until is not None:
        fail(f"the restored guest stopped ({result.reason}) before {until!r} appeared")
    if result.reason == "exit":
        assert result.exit_code is not None
        sys.exit(result.exit_code)
    sys.exit(0 if result.reason in ("hlt", "reset", "shutdown") else 1)
