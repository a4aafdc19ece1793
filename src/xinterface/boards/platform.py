"""What a board attached to a machine: its devices, for the caller to reach (the UART's
receive side, fw_cfg's files, the transports of the virtio devices)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..devices.cmos import Cmos
from ..devices.debug import DebugConsole
from ..devices.fw_cfg import FwCfg
from ..devices.pci import PciHost
from ..devices.reset import ResetControl
from ..devices.uart import Uart16550
from ..interface import XInterface
from ..virtio.console import VirtioConsole
from ..virtio.mmio import VirtioMmio
from ..virtio.pci import VirtioPci

# A virtio device's transport: virtio-mmio on microvm, virtio-pci on pc.
Transport = VirtioMmio | VirtioPci


@dataclass
class Platform:
    """The devices of one board on one xinterface (``intf``); ``pci`` on a board with PCI
    configuration space, ``virtio`` the transports in slot order, ``console`` the
    virtio-console if there is one."""

    intf: XInterface
    fw_cfg: FwCfg
    debugcon: DebugConsole
    uart: Uart16550
    cmos: Cmos
    reset: ResetControl
    pci: PciHost | None = None
    virtio: list[Transport] = field(default_factory=list)
    console: VirtioConsole | None = None
