"""Boards: which devices, at which addresses, which firmware files and tables."""

from collections.abc import Sequence
from typing import Protocol

from ..delivery import Delivery
from ..devices.output import Output
from ..runner.machine import Machine
from ..spec import Disk, Net, VhostUser
from .microvm import attach_microvm, ram_layout
from .pc import attach_pc
from .platform import Platform, Transport


class Board(Protocol):
    """What every board's attach function takes (boards add options of their own)."""

    def __call__(self, machine: Machine, *, debugcon: Output | None = ...,
                 serial: Output | None = ..., posted_debugcon: bool = ...,
                 disks: Sequence[Disk] = ..., nets: Sequence[Net] = ..., rng: bool = ...,
                 virtio_console: bool = ..., doorbells: Delivery = ...,
                 sercon: bool = ..., vhost_user: Sequence[VhostUser] = ...) -> Platform: ...


# The boards by the names a machine description gives them (xinterface.spec.BOARD_NAMES).
BOARDS: dict[str, Board] = {"microvm": attach_microvm, "pc": attach_pc}

__all__ = ["BOARDS", "Board", "Disk", "Net", "Platform", "Transport", "attach_microvm", "attach_pc",
           "ram_layout"]
