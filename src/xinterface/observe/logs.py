"""``--log-level``: the VMM's own records (loggers under ``xinterface``, each message led by
the device's name) to stderr. Devices log through ``logging.getLogger(__name__)``; this only
decides what is shown."""

from __future__ import annotations

LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LEVEL = "warning"


def to_level(text: str) -> str:
    """A level name as ``--log-level`` takes it; ``ValueError`` otherwise."""
    if text.lower() not in LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LEVELS)}.")
    return text.lower()


def configure(level: str) -> None:
    """Show ``xinterface``'s records at ``level`` and above on stderr, once per process."""
    import logging  # only when called: to_level is on `xinterface run`'s start-up path

    logger = logging.getLogger("xinterface")
    logger.setLevel(getattr(logging, to_level(level).upper()))
    if not any(getattr(h, "_xinterface", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("xinterface: %(levelname)s: %(name)s: "
                                               "%(message)s"))
        handler._xinterface = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
