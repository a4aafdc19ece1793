"""``xinterface run``'s options, declared once: the click command (``cli``) and the fast path
that starts without click (``launch``) are both made from :data:`RUN_OPTIONS`.

Each option has a kind; :data:`PARSERS` parses a kind without click (``values``'s functions,
which raise ``ValueError``), and ``options.click_type`` gives click's type for it, over the
same function. :func:`arguments` turns what either path parsed into ``run_image``'s keyword
arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

from .values import FILE, Target, to_address, to_seconds, to_size, to_target

MODES = ("real", "protected", "long")
SERIAL_HELP = ("FILE, - (stdout), stdio (the terminal both ways, raw: Ctrl-A x quits, "
               "Ctrl-A h lists the keys) or none.")

# The kinds of option value.
(FLAG, ADDRESS, MODE, SIZE, COUNT, SERIAL, SECONDS, GDB, QMP, LOG_LEVEL, PATH, TEXT,
 DIRECTORY) = ("flag", "address", "mode", "size", "count", "serial", "seconds", "gdb", "qmp",
               "log-level", "path", "text", "directory")


class Option(NamedTuple):
    """``--NAME``: ``run_image``'s keyword NAME. ``default`` is as typed on the command line
    (click shows it); ``image_default``: the value is None unless given, so that the image
    decides (the default is what it falls back to)."""

    name: str
    kind: str
    default: str | int | float | bool | None
    help: str
    show_default: bool = True
    image_default: bool = False
    spelling: str = ""   # as typed after ``--``, where that is no Python name (``continue``)

    @property
    def flag(self) -> str:
        """The option as typed after ``--`` (``gdb_wait`` is ``--gdb-wait``)."""
        return self.spelling or self.name.replace("_", "-")


RUN_OPTIONS: tuple[Option, ...] = (
    Option("gpa", ADDRESS, "0x1000", "Guest-physical address a source or flat binary is "
           "loaded and started at (an ELF loads at its own addresses).", image_default=True),
    Option("mode", MODE, None, "CPU mode every vCPU starts in. Default: what the image says "
           "(a source's first .code16/.code32/.code64, an ELF's class), real for a flat "
           "binary; a --mode the image contradicts is refused.", show_default=False),
    Option("memory", SIZE, "64M", "Guest RAM: 64M, 1G, 512K (a bare number is MiB, as "
           "QEMU's -m)."),
    Option("vcpus", COUNT, 1, "vCPUs, all starting at the image; each finds its index in "
           "CPUID leaf 1."),
    Option("serial", SERIAL, "none", "Add a 16550A UART at COM1 (0x3f8, polled) and send it "
           "to " + SERIAL_HELP),
    Option("trace", FLAG, False, "Print every guest I/O access to stderr.", show_default=False),
    Option("timeout", SECONDS, 10.0, "Seconds before the run is ended with status 124 (0: no "
           "limit; no limit by default with --serial stdio)."),
    Option("strict", FLAG, False, "Stop on any access no device claims.", show_default=False),
    Option("gdb", GDB, None, "Serve GDB's remote protocol on tcp::PORT (loopback), "
           "tcp:HOST:PORT or unix:PATH (docs/gdb.md); no --timeout unless given.",
           show_default=False),
    Option("gdb_wait", FLAG, False, "With --gdb: hold every vCPU before its first "
           "instruction until GDB attaches (QEMU's -S).", show_default=False),
    Option("debug", FLAG, False, "Show tracebacks and registers on errors.",
           show_default=False),
)
# The monitoring options, on ``run`` and ``boot`` alike (``--log-level`` is ``log_level``).
MONITOR_OPTIONS: tuple[Option, ...] = (
    Option("qmp", QMP, None, "Serve QMP on a UNIX socket: unix:PATH (QEMU's -qmp "
           "unix:PATH,server=on,wait=off).", show_default=False),
    Option("log_level", LOG_LEVEL, "warning", "Show the VMM's log records from this level on "
           "(debug, info, warning, error)."),
    Option("metrics", PATH, None, "Write the machine's counters to FILE as JSON lines, every "
           "second and at the end.", show_default=False),
)
# Snapshot at a console line (``snapshot_on``), on ``run`` and ``boot`` alike.
SNAPSHOT_OPTIONS: tuple[Option, ...] = (
    Option("snapshot_on", TEXT, None, "When TEXT appears on a console (the debug console or "
           "COM1), pause, write a snapshot to --snapshot DIR, and end with status 0 (or go on: "
           "--continue). `xinterface restore DIR` continues from there.", show_default=False),
    Option("snapshot", DIRECTORY, None, "The directory --snapshot-on writes (created; it must "
           "not hold a snapshot already).", show_default=False),
    Option("continue_run", FLAG, False, "With --snapshot-on: after the snapshot, let the "
           "guest go on.", show_default=False, spelling="continue"),
)
RUN_OPTIONS = RUN_OPTIONS + MONITOR_OPTIONS + SNAPSHOT_OPTIONS


def to_count(text: str) -> int:
    """1 or more, as click's ``IntRange(min=1)`` reads it."""
    count = int(text)
    if count < 1:
        raise ValueError(f"{count} is not in the range x>=1.")
    return count


def to_mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"{text!r} is not one of {', '.join(map(repr, MODES))}.")
    return text


def to_serial(text: str) -> Target:
    """``--serial``'s target, unopened (click's type opens a FILE)."""
    return to_target(text, interactive=True)


def to_qmp(text: str) -> str:
    from ..qmp.server import parse_address

    parse_address(text)
    return text


def to_log_level(text: str) -> str:
    from ..observe.logs import to_level

    return to_level(text)


PARSERS: dict[str, Callable[[str], Any]] = {
    ADDRESS: to_address, MODE: to_mode, SIZE: to_size, COUNT: to_count, SERIAL: to_serial,
    SECONDS: to_seconds, GDB: str, QMP: to_qmp, LOG_LEVEL: to_log_level, PATH: str, TEXT: str,
    DIRECTORY: str}


def arguments(parsed: Mapping[str, Any], given: Collection[str]) -> dict[str, Any]:
    """``run_image``'s keyword arguments from the options' values (``parsed``, every option
    present, defaults converted) and the names of those given on the command line."""
    from .run import no_limit_when_interactive

    options: dict[str, Any] = {
        o.name: None if o.image_default and o.name not in given else parsed[o.name]
        for o in RUN_OPTIONS}
    options["timeout"] = no_limit_when_interactive(options["serial"], options["timeout"],
                                                   "timeout" in given)
    if options["gdb"] is not None and "timeout" not in given:
        options["timeout"] = 0  # a debugging session lasts as long as the user wants
    return options


def parse_fast(args: list[str]) -> dict[str, Any] | None:
    """``run``'s arguments as ``run_image`` takes them (``image`` too), or None for anything
    but plain options with good values and one image that is a readable file: click then
    parses them again and says what is wrong."""
    import os

    table = {o.flag: o for o in RUN_OPTIONS}
    given: dict[str, Any] = {}
    image = None
    i = 0
    try:
        while i < len(args):
            arg = args[i]
            i += 1
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg[2:].partition("=")
                option = table.get(name)
                if option is None:
                    return None
                name = option.name
                if option.kind == FLAG:
                    if eq:
                        return None
                    given[name] = True
                    continue
                if not eq:
                    if i == len(args):
                        return None
                    value, i = args[i], i + 1
                given[name] = PARSERS[option.kind](value)
                if option.kind == SERIAL and given[name].kind == FILE:
                    return None   # click opens it and closes it with its context
            elif arg.startswith("-") or image is not None:
                return None
            else:
                image = arg
    except ValueError:
        return None
    # click's Path(exists=True, dir_okay=False) also wants it readable.
    if image is None or not os.path.isfile(image) or not os.access(image, os.R_OK):
        return None
    parsed = {o.name: given.get(o.name, default_value(o)) for o in RUN_OPTIONS}
    options = arguments(parsed, given)
    options["image"] = image
    return options


def default_value(option: Option) -> Any:
    """``option``'s default as its parser reads it (a flag's is False)."""
    if isinstance(option.default, str) and option.kind != FLAG:
        return PARSERS[option.kind](option.default)
    return option.default


__all__ = ["FLAG", "MODES", "MONITOR_OPTIONS", "PARSERS", "RUN_OPTIONS", "SERIAL_HELP",
           "SNAPSHOT_OPTIONS", "Option", "arguments", "default_value", "parse_fast"]
