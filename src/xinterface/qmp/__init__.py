"""QMP, the QEMU Machine Protocol, so QEMU's own tools drive an xinterface machine:
:class:`QmpServer` on a UNIX socket over :class:`Controls` (run control mapped onto the run
state machine), the command table (:mod:`.commands`), the human monitor (:mod:`.hmp`)."""

from .commands import QmpError, register
from .controls import Controls
from .server import QmpServer, parse_address

__all__ = ["Controls", "QmpError", "QmpServer", "parse_address", "register"]
