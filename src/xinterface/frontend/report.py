"""Failures as the command line reports them: one line, ``xinterface: ...``, and a status.

With ``--debug`` the traceback comes first, then the same line once, with the registers of a
guest error under it (never the message twice).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

from ..errors import GuestError, KvmError, XInterfaceError

if TYPE_CHECKING:
    from .outputs import Stdout

EXIT_FAILURE = 1
EXIT_USAGE = 2        # click's status for a bad argument
EXIT_TIMEOUT = 124    # as timeout(1)
EXIT_SIGNAL_BASE = 128  # shells report death by signal N as 128 + N
SIGINT_STATUS = EXIT_SIGNAL_BASE + 2


def fail(message: str, *, status: int = EXIT_FAILURE, exc: BaseException | None = None,
         debug: bool = False) -> NoReturn:
    if debug and exc is not None:
        import traceback

        # The frames (and any chained cause) without the last exception's own text, which the
        # message below already is.
        te = traceback.TracebackException.from_exception(exc)
        lines = list(te.format())
        del lines[len(lines) - len(list(te.format_exception_only())):]
        sys.stderr.write("".join(lines))
    sys.stderr.write(f"xinterface: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def guest_error(exc: GuestError, debug: bool) -> NoReturn:
    """The stop in one line; with ``--debug``, the registers under it."""
    text = str(exc)
    fail(text if debug else f"{text.splitlines()[0]} (--debug shows registers)", exc=exc,
         debug=debug)


@contextlib.contextmanager
def reported(stdout: Stdout, debug: bool) -> Iterator[None]:
    """A run of ``boot`` or ``restore``: its failures as the command's one line (a guest
    error with its registers under ``--debug``, an error of ours or of the system), and
    anything else (Ctrl-C, a signal) raised on; each way out ends the guest's last partial
    line on stdout first, so the message after it starts a line."""
    try:
        yield
    except GuestError as exc:
        stdout.finish_line()
        guest_error(exc, debug)
    except (XInterfaceError, KvmError, OSError) as exc:
        stdout.finish_line()
        fail(str(exc), exc=exc, debug=debug)
    except BaseException:
        stdout.finish_line()
        raise
    stdout.finish_line()
