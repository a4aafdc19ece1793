"""Option types of the command line (click): sizes as QEMU reads them, addresses, timeouts,
output targets. The parsing is ``values``'s; these turn its ``ValueError`` into click's usage
error naming the option."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click

from .run_options import (
    ADDRESS,
    COUNT,
    DIRECTORY,
    FLAG,
    GDB,
    LOG_LEVEL,
    MODE,
    MODES,
    PARSERS,
    PATH,
    QMP,
    SECONDS,
    SERIAL,
    SIZE,
    TEXT,
    Option,
)
from .values import Target, open_target, parse_size, to_address, to_seconds, to_size, to_target

__all__ = ["AddressType", "SecondsType", "SizeType", "TargetType", "click_type", "parse_size",
           "run_option"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Newer click makes ParamType generic; subscript it only for the type checker.
if TYPE_CHECKING:
    _Param = click.ParamType
else:
    class _Param(click.ParamType, Generic[T]):
        pass


class _Parsed(_Param[T]):
    """A click type over one of ``values``'s parsers."""

    parse: Callable[[str], T]

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> T:
        if not isinstance(value, str):
            return value  # type: ignore[return-value]  # a default already converted
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(_Parsed[int]):
    """``64M``, ``1G``, ``512K``, ``4096B``; a bare number is MiB, as QEMU's ``-m``."""

    name = "size"
    parse = staticmethod(to_size)


class AddressType(_Parsed[int]):
    """A non-negative integer in any base Python reads: ``0x1000``, ``4096``."""

    name = "address"
    parse = staticmethod(to_address)


class SecondsType(_Parsed[float]):
    """Seconds, 0 or more and finite; 0 means no limit."""

    name = "seconds"
    parse = staticmethod(to_seconds)


class QmpType(_Parsed[str]):
    """``unix:PATH``, as QEMU's ``-qmp``."""

    name = "unix:PATH"
    parse = staticmethod(PARSERS[QMP])


class LogLevelType(_Parsed[str]):
    name = "level"
    parse = staticmethod(PARSERS[LOG_LEVEL])


class TargetType(_Param[Target]):
    """``FILE``, ``-`` (stdout), ``none`` (or empty), and with ``interactive``: ``stdio``, the
    terminal both ways. A file is opened here, so an error names the option."""

    name = "target"

    def __init__(self, interactive: bool = False) -> None:
        self.interactive = interactive

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> Target:
        if isinstance(value, Target):
            return value
        target = to_target(str(value), interactive=self.interactive)
        try:
            target = open_target(target)
        except OSError as exc:
            self.fail(f"cannot write {target.path}: {exc.strerror}", param, ctx)
        if ctx is not None and target.stream is not None:
            ctx.call_on_close(target.stream.close)
        return target


def click_type(kind: str) -> _Param[Any]:
    """click's type for an option kind of ``run_options``, over the same parser."""
    types: dict[str, Callable[[], _Param[Any]]] = {
        ADDRESS: AddressType, MODE: lambda: click.Choice(MODES), SIZE: SizeType,
        COUNT: lambda: click.IntRange(min=1), SERIAL: lambda: TargetType(interactive=True),
        SECONDS: SecondsType, GDB: lambda: click.STRING, QMP: QmpType, LOG_LEVEL: LogLevelType,
        PATH: lambda: click.Path(dir_okay=False), TEXT: lambda: click.STRING,
        DIRECTORY: lambda: click.Path(file_okay=False)}
    return types[kind]()


def run_option(option: Option) -> Callable[[F], F]:
    """The click option of one row of ``run_options.RUN_OPTIONS``."""
    if option.kind == FLAG:
        return click.option(f"--{option.flag}", option.name, is_flag=True, help=option.help)
    return click.option(f"--{option.flag}", option.name, type=click_type(option.kind),
                        default=option.default, show_default=option.show_default,
                        help=option.help)
