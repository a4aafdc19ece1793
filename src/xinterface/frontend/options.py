"""Option types of the command line: sizes as QEMU reads them, addresses, timeouts."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import click

# A number, an optional unit, an optional "B"/"iB": "64M", "1.5G", "4096B", "512KiB", "3".
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# QEMU's -m reads a bare number as MiB (qemu-options.hx, "-m [size=]megs"); so do we.
BARE_NUMBER_UNIT = 1 << 20

# Newer click makes ParamType generic; subscript it only for the type checker.
if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
    _FloatParam = click.ParamType[float]
else:
    _IntParam = _FloatParam = click.ParamType


def parse_size(text: str) -> int | None:
    """Bytes of ``text`` (``64M``, ``1G``, ``4096B``; a bare number is MiB), or None."""
    match = _SIZE.match(text)
    if not match:
        return None
    number, unit, suffix = match.groups()
    scale = _UNITS[unit.upper()] if unit or suffix else BARE_NUMBER_UNIT
    try:
        value = Decimal(number) * scale
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


class SizeType(_IntParam):
    """``64M``, ``1G``, ``512K``, ``4096B``; a bare number is MiB, as QEMU's ``-m``."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        size = parse_size(str(value))
        if size is None:
            self.fail(f"{value!r} is not a size such as 64M, 1G or 512K (a bare number is "
                      "MiB, as QEMU's -m)", param, ctx)
        if size == 0:
            self.fail(f"{value!r} is no memory at all", param, ctx)
        return size


class AddressType(_IntParam):
    """A non-negative integer in any base Python reads: ``0x1000``, ``4096``."""

    name = "address"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value), 0)
            except ValueError:
                self.fail(f"{value!r} is not an address (e.g. 0x1000)", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return number


class SecondsType(_FloatParam):
    """Seconds, 0 or more and finite; 0 means no limit."""

    name = "seconds"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r}: give 0 or more seconds (0: no limit)", param, ctx)
        return seconds
