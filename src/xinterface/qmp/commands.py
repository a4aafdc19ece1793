"""QMP's commands: one table from name to handler (QEMU's qapi schema names and reply
shapes), and the errors QMP answers with.

:func:`register` is the seam for commands that live elsewhere: the snapshot commands
(``snapshot-save``, ``snapshot-load``) register themselves here when snapshot/restore is
built, and are then listed by ``query-commands`` like the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hmp
from .controls import Controls

# (controls, arguments) -> the "return" value
Handler = Callable[[Controls, dict[str, Any]], Any]

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"


class QmpError(Exception):
    """A command failed: QMP's ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


COMMANDS: dict[str, tuple[Handler, frozenset[str], frozenset[str]]] = {}


def register(name: str, handler: Handler, *, required: tuple[str, ...] = (),
             optional: tuple[str, ...] = ()) -> None:
    """Add command ``name``: its arguments are checked (missing, unexpected) before
    ``handler`` runs; a name twice is a ``ValueError``."""
    if name in COMMANDS:
        raise ValueError(f"QMP command {name!r} is registered already")
    COMMANDS[name] = (handler, frozenset(required), frozenset(optional))


def execute(controls: Controls, name: str, arguments: dict[str, Any]) -> Any:
    """Run one command; :class:`QmpError` for an unknown one or bad arguments."""
    entry = COMMANDS.get(name)
    if entry is None:
        raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
    handler, required, optional = entry
    for key in sorted(required - arguments.keys()):
        raise QmpError(f"Parameter '{key}' is missing")
    for key in sorted(arguments.keys() - required - optional):
        raise QmpError(f"Parameter '{key}' is unexpected")
    return handler(controls, arguments)


def version_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("xinterface")
    except PackageNotFoundError:
        text = "0.0.0"
    numbers = [int(p) if p.isdigit() else 0 for p in text.split(".")[:3]] + [0, 0, 0]
    return {"qemu": {"major": numbers[0], "minor": numbers[1], "micro": numbers[2]},
            "package": f"xinterface {text}"}


def _human(controls: Controls, arguments: dict[str, Any]) -> str:
    line = arguments["command-line"]
    if not isinstance(line, str):
        raise QmpError("Invalid parameter type for 'command-line', expected: string")
    return hmp.execute(controls, line)


def _done(action: Callable[[Controls], None]) -> Handler:
    def run(controls: Controls, arguments: dict[str, Any]) -> dict[str, Any]:
        action(controls)
        return {}
    return run


register("query-version", lambda c, a: version_info())
register("query-status", lambda c, a: {"status": c.status(), "running": c.status() == "running",
                                       "singlestep": False})
register("query-commands", lambda c, a: [{"name": n} for n in sorted(COMMANDS)])
register("query-cpus-fast", lambda c, a: c.cpus())
register("stop", _done(Controls.stop))
register("cont", _done(Controls.cont))
register("system_reset", _done(Controls.system_reset))
register("quit", _done(Controls.quit))
register("human-monitor-command", _human, required=("command-line",), optional=("cpu-index",))
