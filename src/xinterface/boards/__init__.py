"""Boards: which devices, at which addresses, which firmware files and tables."""

from .microvm import Platform, attach_microvm, ram_layout
from .pc import attach_pc

BOARDS = {"microvm": attach_microvm, "pc": attach_pc}

__all__ = ["BOARDS", "Platform", "attach_microvm", "attach_pc", "ram_layout"]
