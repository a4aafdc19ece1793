"""Loaders: put a guest image in memory and give each vCPU the state it starts from."""

from .asm import AssemblerError, assemble
from .firmware import load_firmware
from .flat import MODES, load_flat

__all__ = ["MODES", "AssemblerError", "assemble", "load_firmware", "load_flat"]
