"""Option values of the command line as plain functions (no click): sizes as QEMU reads them,
addresses, seconds, output targets. Each returns the value or raises ``ValueError`` with the
message a user sees; ``options`` and ``outputs`` wrap them as click types, and the ``run``
fast path (``launch``) calls them directly."""

from __future__ import annotations

import math
import re
from typing import IO, NamedTuple

# A number, an optional unit, an optional "B"/"iB": "64M", "1.5G", "4096B", "512KiB", "3".
_SIZE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# QEMU's -m reads a bare number as MiB (qemu-options.hx, "-m [size=]megs"); so do we.
BARE_NUMBER_UNIT = 1 << 20

NONE, STDOUT, STDIO, FILE = "none", "stdout", "stdio", "file"


class Target(NamedTuple):
    """Where ``--debugcon``/``--serial`` output goes: ``kind`` is one of NONE, STDOUT, STDIO,
    FILE; a FILE has its ``path`` and, once opened, its ``stream``."""

    kind: str
    path: str = ""
    stream: IO[bytes] | None = None


def parse_size(text: str) -> int | None:
    """Bytes of ``text`` (``64M``, ``1G``, ``4096B``, ``1.5G``; a bare number is MiB), or None
    if it is not a size or not a whole number of bytes."""
    match = _SIZE.match(text)
    if not match:
        return None
    whole, fraction, unit, suffix = match.groups()
    scale = _UNITS[unit.upper()] if unit or suffix else BARE_NUMBER_UNIT
    # Exact arithmetic on the digits: (whole.fraction) * scale as a fraction of integers.
    fraction = fraction or ""
    numerator = int(whole + fraction) * scale
    denominator = 10 ** len(fraction)
    return numerator // denominator if numerator % denominator == 0 else None


def to_size(text: str) -> int:
    size = parse_size(text)
    if size is None:
        raise ValueError(f"{text!r} is not a size such as 64M, 1G or 512K (a bare number is "
                         "MiB, as QEMU's -m)")
    if size == 0:
        raise ValueError(f"{text!r} is no memory at all")
    return size


def to_address(text: str) -> int:
    """A non-negative integer in any base Python reads: ``0x1000``, ``4096``."""
    try:
        number = int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an address (e.g. 0x1000)") from None
    if number < 0:
        raise ValueError(f"{text!r} is negative")
    return number


def to_seconds(text: str) -> float:
    """Seconds, 0 or more and finite; 0 means no limit."""
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r}: give 0 or more seconds (0: no limit)")
    return seconds


def to_target(text: str, *, interactive: bool) -> Target:
    """``FILE``, ``-`` (stdout), ``none`` (or empty), and with ``interactive``: ``stdio``, the
    terminal both ways (else stdout). A FILE is returned unopened."""
    if text in ("", NONE):
        return Target(NONE)
    if text == "-":
        return Target(STDOUT)
    if text == STDIO:
        return Target(STDIO if interactive else STDOUT)
    return Target(FILE, text)


def open_target(target: Target) -> Target:
    """``target`` with its file opened for writing (``OSError`` if it cannot be)."""
    if target.kind != FILE or target.stream is not None:
        return target
    return target._replace(stream=open(target.path, "wb"))   # the caller closes it
