"""An :class:`~xinterface.interface.XInterface` over a vhost-user frontend's memory.

A device gets from a session what ``bind()`` gives it on a local VM: ``copy_to``,
``copy_from``, ``vmap``, ``sgmap``, ``get``/``put``, ``on_release``; the same code runs
them, over the session's :class:`~.memory.MemoryTable` instead of a VM's RAM. The buses
belong to the frontend (QEMU decodes the guest's registers and doorbells): the host is no
KVM VM, so ``ioevent``, ``iorange``, ``irqfd`` and ``set_irq`` are ``EOPNOTSUPP``.
"""

from __future__ import annotations

import errno
import threading

from ..errors import XInterfaceError
from ..interface import XInterface
from ..memory import GuestMemory
from ..runstate import RunControl
from ..vm import Client


class MemoryHost:
    """The :class:`~xinterface.interface.Host` of a session's interface: the memory table
    (replaced by each SET_MEM_TABLE, None before the first) and the bound clients. There is
    no in-kernel irqchip (``irqchip`` is False), and no run here for a device to end: its
    ``run_control`` does nothing (the frontend owns the guest's run)."""

    irqchip = False

    def __init__(self) -> None:
        self.memory: GuestMemory | None = None
        self.run_control = RunControl()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def add_client(self, client: Client) -> None:
        with self._lock:
            self._clients.append(client)

    def remove_client(self, client: Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def __repr__(self) -> str:
        return f"MemoryHost({self.memory!r})"


class SessionInterface(XInterface):
    """The interface a vhost-user session attaches its device with, bound to the session's
    :class:`MemoryHost`: a device that needs a KVM VM (``intf.vm``: its buses, irqfds) cannot
    be served over vhost-user, and the virtio devices never ask."""

    host: MemoryHost

    def __init__(self, host: MemoryHost) -> None:
        super().__init__(host)

    def _memory(self) -> GuestMemory:
        self._check()
        memory = self.host.memory
        if memory is None:
            raise XInterfaceError(errno.EFAULT, "the frontend has sent no memory table yet",
                                  argument="gpa", value=None)
        return memory
