"""``xinterface run IMAGE``: load an image, run it on the default devices, exit with its
status. Called by the click command (``cli``) and by the fast path (``launch``), which parse
the same options (``run_options``) into the same arguments."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from .report import EXIT_SIGNAL_BASE, EXIT_TIMEOUT, EXIT_USAGE, SIGINT_STATUS, fail, guest_error
from .values import NONE, STDIO, Target

T = TypeVar("T")


def guarded(command: Callable[[], T]) -> T:
    """Ctrl-C and a terminating signal end a command as a shell reports them: status 130
    without click's "Aborted!", and 128 + N with one line for signal N."""
    from .console import Terminated

    try:
        return command()
    except KeyboardInterrupt:
        sys.exit(SIGINT_STATUS)
    except Terminated as exc:
        fail(str(exc), status=EXIT_SIGNAL_BASE + exc.signum)


def no_limit_when_interactive(serial: Target, timeout: float, timeout_given: bool) -> float:
    """An interactive console runs until the user quits, unless --timeout was given."""
    return 0 if serial.kind == STDIO and not timeout_given else timeout


def run_image(image: str | os.PathLike[str], *, gpa: int | None, mode: str | None,
              memory: int, vcpus: int, serial: Target, trace: bool, timeout: float,
              strict: bool, debug: bool, gdb: str | None = None, gdb_wait: bool = False,
              qmp: str | None = None, log_level: str = "warning",
              metrics: str | None = None, snapshot_on: str | None = None,
              snapshot: str | None = None, continue_run: bool = False) -> NoReturn:
    """Run ``image`` (``gpa`` None: where the image says, else 0x1000) until it exits, halts,
    or ``timeout`` seconds pass (0: no limit); exit with the guest's status. ``qmp``,
    ``log_level``, ``metrics``: the monitoring options (``Session``). ``snapshot_on``,
    ``snapshot``, ``continue_run``: a snapshot at a console line (``snapshot_on``)."""
    from ..build import build, build_machine
    from ..errors import GuestError, KvmError, XInterfaceError
    from ..observe.logs import DEFAULT_LEVEL, configure
    from ..spec import Consoles, MachineSpec
    from .image import ImageError, load_image
    from .outputs import Relay, Stdout
    from .session import Session
    from .snapshot_on import SnapshotOn, check_options

    wrong = check_options(snapshot_on, snapshot, continue_run)
    if wrong is not None:
        fail(wrong, status=EXIT_USAGE)
    # A bare machine's only records are --strict's and QMP's: without them, `xinterface
    # run` starts without importing logging (README, Performance).
    if strict or qmp is not None or log_level != DEFAULT_LEVEL or "logging" in sys.modules:
        configure(log_level)
    stdout = Stdout()
    # No board: the machine's debug ports, and COM1 when --serial says where it writes.
    spec = MachineSpec(memory=memory, vcpus=vcpus, board=None, irqchip=False, strict=strict,
                       consoles=Consoles(uart=serial.kind != NONE))
    taker: SnapshotOn | None = None
    try:
        guest = load_image(image, gpa=gpa, mode=mode, memory=memory)
        console = Relay(stdout)
        with build_machine(spec, console=console,  # type: ignore[arg-type]
                           trace=sys.stderr if trace else None) as machine:
            machine.load_flat(guest.data, gpa=guest.gpa, mode=guest.mode)
            if guest.entry is not None:
                machine.set_entry(guest.entry)
            if gdb is not None:
                machine.serve_gdb(gdb, wait=gdb_wait)
            session = Session(machine, serial, stdout, qmp=qmp, metrics=metrics)
            serial_out = session.serial_output()
            if snapshot_on is not None and snapshot is not None:
                taker = SnapshotOn(machine, snapshot_on, snapshot, continue_run)
                console.target = taker.watch(stdout)
                serial_out = taker.watch(serial_out)
            built = build(spec, machine, serial=serial_out)
            session.platform = built.platform
            if built.feed is not None:
                session.connect(built.feed)
            result = (session.run(timeout or None) if taker is None
                      else taker.run(session, timeout or None))
    except ImageError as exc:
        fail(str(exc), exc=exc, debug=debug)
    except GuestError as exc:
        stdout.finish_line()
        guest_error(exc, debug)
    except (XInterfaceError, KvmError) as exc:
        stdout.finish_line()
        fail(str(exc), exc=exc, debug=debug)
    except OSError as exc:
        fail(f"{exc.filename or image}: {exc.strerror}", exc=exc, debug=debug)
    except BaseException:  # Ctrl-C, a signal: the message after it starts a line too
        stdout.finish_line()
        raise
    stdout.finish_line()
    session.check_console()
    if session.quit_requested:
        sys.exit(0)
    if taker is not None:
        taker.end("the guest", result)
    if result.reason == "timeout":
        fail(f"the guest was still running after {timeout:g} s; raise --timeout, or check "
             "that it halts or writes port 0xf4", status=EXIT_TIMEOUT)
    if result.reason == "exit":
        assert result.exit_code is not None
        sys.exit(result.exit_code)
    sys.exit(0)
