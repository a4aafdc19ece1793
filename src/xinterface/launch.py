"""The ``xinterface`` command's entry point. ``xinterface run IMAGE`` with options it can take
as given is started here without importing click (about a third of the process's start-up:
docs/performance.md); anything else, including every mistake, goes to the click command line
(``cli``), which parses it again and says what is wrong."""

from __future__ import annotations

import gc
import sys
from typing import Any


def _parse_run(args: list[str]) -> dict[str, Any] | None:
    """``run``'s arguments as ``run_image`` takes them, or None for anything but plain
    options with good values and one image that is a file (``run_options``' table)."""
    from .frontend.run_options import parse_fast

    return parse_fast(args)


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
