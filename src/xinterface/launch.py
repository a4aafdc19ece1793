"""The ``xinterface`` command's entry point. ``xinterface run IMAGE`` with options it can take
as given is started here without importing click (about a third of the process's start-up:
README, Performance); anything else, including every mistake, goes to the click command line
(``cli``), which parses it again and says what is wrong."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Any


def _vcpus(text: str) -> int:
    count = int(text)   # as click's IntRange parses it
    if count < 1:
        raise ValueError(text)
    return count


def _parse_run(args: list[str]) -> dict[str, Any] | None:
    """``run``'s arguments as ``run_image`` takes them, or None for anything but plain
    options with good values and one image that is a file."""
    from .frontend import run as run_defaults
    from .frontend.run import MODES
    from .frontend.values import FILE, to_address, to_seconds, to_size, to_target

    def mode(text: str) -> str:
        if text not in MODES:
            raise ValueError(text)
        return text

    def serial(text: str) -> object:
        target = to_target(text, interactive=True)
        if target.kind == FILE:
            raise ValueError(text)   # click opens it and closes it with its context
        return target

    parsers: dict[str, Callable[[str], object]] = {
        "gpa": to_address, "mode": mode, "memory": to_size, "vcpus": _vcpus,
        "serial": serial, "timeout": to_seconds}
    flags = {"trace", "strict", "debug"}
    given: dict[str, Any] = {}
    image = None
    i = 0
    try:
        while i < len(args):
            arg = args[i]
            i += 1
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg[2:].partition("=")
                if name in flags and not eq:
                    given[name] = True
                elif name in parsers:
                    if not eq:
                        if i == len(args):
                            return None
                        value, i = args[i], i + 1
                    given[name] = parsers[name](value)
                else:
                    return None
            elif arg.startswith("-") or image is not None:
                return None
            else:
                image = arg
    except ValueError:
        return None
    # click's Path(exists=True, dir_okay=False) also wants it readable.
    if image is None or not os.path.isfile(image) or not os.access(image, os.R_OK):
        return None
    from .frontend.run import no_limit_when_interactive

    options: dict[str, Any] = {
        "gpa": None, "mode": None, "memory": to_size(run_defaults.MEMORY),
        "vcpus": run_defaults.VCPUS, "serial": to_target(run_defaults.SERIAL, interactive=True),
        "trace": False, "strict": False, "debug": False, "timeout": run_defaults.TIMEOUT}
    options.update(given)
    options["timeout"] = no_limit_when_interactive(options["serial"], options["timeout"],
                                                   "timeout" in given)
    options["image"] = image
    return options


def main() -> None:
    args = sys.argv[1:]
    if args[:1] != ["run"]:
        _click()
        return
    # As in the package's __init__: no collection while importing (nothing to collect).
    gc.disable()
    try:
        options = _parse_run(args[1:])
        if options is not None:
            from .frontend import image, outputs, session  # noqa: F401 - what run_image uses
            from .frontend.run import guarded, run_image
    finally:
        gc.enable()
    if options is None:
        _click()
        return
    path = options.pop("image")
    guarded(lambda: run_image(path, **options))


def _click() -> None:
    from .cli import main as click_main

    click_main()
