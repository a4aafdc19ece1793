"""A vhost-user backend: the xinterface bound across a process boundary.

A :class:`~xinterface.virtio.device.VirtioDevice` served to a vhost-user frontend (QEMU)
over a UNIX socket, exactly as a transport serves it in-process: the guest memory of the
frontend (SET_MEM_TABLE) is an xinterface (:class:`SessionInterface`), the kick eventfds
are its doorbells, the call eventfds its interrupts. ``xinterface serve`` is the command.

Layers: :mod:`.protocol` (the wire format), :mod:`.channel` (whole messages with fds),
:mod:`.memory` (the memory table), :mod:`.interface`, :mod:`.session` (one frontend),
:mod:`.server` (one frontend after another).
"""

from .channel import Channel, Disconnected, Message
from .interface import MemoryHost, SessionInterface
from .memory import MemoryTable
from .protocol import ProtocolError, ProtocolFeature, Request
from .server import Server, adopt, listen
from .session import PROTOCOL_FEATURES, Session

__all__ = [
    "PROTOCOL_FEATURES",
    "Channel",
    "Disconnected",
    "MemoryHost",
    "MemoryTable",
    "Message",
    "ProtocolError",
    "ProtocolFeature",
    "Request",
    "Server",
    "Session",
    "SessionInterface",
    "adopt",
    "listen",
]
