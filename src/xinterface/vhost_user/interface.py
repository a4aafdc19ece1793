"""An :class:`~xinterface.interface.XInterface` over a vhost-user frontend's memory.

A device gets from a session what ``bind()`` gives it on a local VM: ``copy_to``,
``copy_from``, ``vmap``, ``sgmap``, ``get``/``put``, ``on_release``; the same code runs
them, over the session's :class:`~.memory.MemoryTable` instead of a VM's RAM. The buses
belong to the frontend (QEMU decodes the guest's registers and doorbells), so ``ioevent``,
``iorange``, ``irqfd`` and ``set_irq`` are ``EOPNOTSUPP``.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Protocol, cast

from ..errors import XInterfaceError
from ..interface import XInterface
from ..iobus import IoBus
from ..memory import GuestMemory

if TYPE_CHECKING:
    from ..vm import Vm


class _Client(Protocol):
    def _vm_closing(self) -> None: ...


class MemoryHost:
    """What an interface reads of the VM it is bound to, for a session: the memory table
    (replaced by each SET_MEM_TABLE, None before the first) and the bound clients. There is
    no in-kernel irqchip (``irqchip`` is False), so irqfd and set_irq refuse."""

    irqchip = False

    def __init__(self) -> None:
        self.memory: GuestMemory | None = None
        self.closed = False
        self._clients: list[_Client] = []
        self._lock = threading.Lock()

    def add_client(self, client: _Client) -> None:
        with self._lock:
            self._clients.append(client)

    def remove_client(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)


class SessionInterface(XInterface):
    """The interface a vhost-user session attaches its device with. ``vm`` is the session's
    :class:`MemoryHost`, not a KVM VM: a device that needs a VM (to end a run, say) cannot
    be served over vhost-user, and the virtio devices never ask."""

    def __init__(self, host: MemoryHost) -> None:
        # XInterface reads only .memory, .add_client, .remove_client and .irqchip of its VM on the
        # paths a session allows; _bus below closes the others.
        super().__init__(cast("Vm", host))
        self.host = host

    def _memory(self) -> GuestMemory:
        self._check()
        memory = self.host.memory
        if memory is None:
            raise XInterfaceError(errno.EFAULT, "the frontend has sent no memory table yet",
                                  argument="gpa", value=None)
        return memory

    def _bus(self, addr: object, length: object, flags: object) -> tuple[IoBus, int, int]:
        self._check()
        raise XInterfaceError(errno.EOPNOTSUPP, "a vhost-user frontend owns the guest's "
                              "buses: no I/O events or ranges here", argument="addr",
                              value=addr)
