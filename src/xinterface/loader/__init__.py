"""Loaders: put a guest image in memory and give each vCPU the state it starts from.

``assemble`` (and ``AssemblerError``) are imported on first use: the assembler's module
brings pathlib, which a run of a prebuilt image never needs (docs/performance.md)."""

from typing import TYPE_CHECKING, Any

from .firmware import load_firmware
from .flat import MODES, load_flat

if TYPE_CHECKING:
    from .asm import AssemblerError, assemble

__all__ = ["MODES", "AssemblerError", "assemble", "load_firmware", "load_flat"]


def __getattr__(name: str) -> Any:
    if name in ("AssemblerError", "assemble"):
        from . import asm

        return getattr(asm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
