"""The virtio-pci transport: a virtio device as a transitional PCI function, its BARs'
registrations following where the guest puts them, its interrupts through MSI-X vectors
while the driver has enabled them and otherwise its ISR status driving INTx."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from ...delivery import Delivery
from ...devices.interrupt import InterruptLine
from ...devices.msi import MsiRoutes
from ...devices.pci.function import COMMAND_INTX_DISABLE, PciFunction
from ...devices.persist import State, bad_field, field_int
from ...errors import XInterfaceError
from ...interface import XInterface, XIOEvent, XIOEventFlags, XIORange
from ..device import Interrupt, VirtioDevice
from ..transport import (
    InterruptStatus,
    load_device,
    register_doorbells,
    save_device,
)
from .cfg_window import VirtioPciFunction
from .layout import (
    CLASS_CODES,
    L_QUEUE_NOTIFY,
    LEGACY_BAR,
    LEGACY_BAR_SIZE,
    MODERN_BAR,
    MODERN_BAR_SIZE,
    NOTIFY_OFFSET,
    TRANSITIONAL_DEVICE_IDS,
    VIRTIO_PCI_VENDOR,
    Registers,
    pci_device_id,
)
from .legacy import LegacyRegisters
from .modern import ModernRegisters
from .msix import MAX_VECTORS, MSIX_BAR, MSIX_BAR_SIZE, Msix
from .state import PciState

log = logging.getLogger(__name__)


class _IntxGate(InterruptLine):
    """The function's INTx as its command register lets it out: Interrupt Disable (PCI 3.0,
    6.2.2) holds the pin deasserted while set, and so does MSI-X Enable (6.8.2: a function
    with MSI-X enabled signals no INTx); each interrupt, and each change of MSI-X Enable,
    looks at them again."""

    def __init__(self, line: InterruptLine | None, function: PciFunction,
                 msix: Msix | None) -> None:
        self._line = line
        self._function = function
        self._msix = msix
        self._wanted = False
        self._asserted = False
        self._lock = threading.Lock()

    def set_level(self, level: bool) -> None:
        self._wanted = level
        self._update()

    def trigger(self) -> None:
        self._update()
        if self._line is not None:
            self._line.trigger()

    def update(self) -> None:
        self._update()

    def _update(self) -> None:
        with self._lock:
            level = (self._wanted and not self._function.command & COMMAND_INTX_DISABLE
                     and not (self._msix is not None and self._msix.enabled))
            if level == self._asserted:
                return
            self._asserted = level
            if self._line is not None:
                self._line.set_level(level)


class VirtioPci:
    """The virtio-pci transport of ``device``: its PCI function is :attr:`function`, which a
    board puts on the host bridge (``PciHost.add(slot, transport.function)``).

    One function serves both interfaces, as QEMU's default transitional devices do: legacy
    (I/O BAR0, :mod:`.legacy`) for the device types that have a transitional ID, and modern
    (64-bit memory BAR4, :mod:`.modern`), both reachable through the configuration access
    window too (:mod:`.cfg_window`).

    ``irq``: the function's INTx line (:class:`~xinterface.devices.pci.irq.IntxLine` routes
    INTA# through the PIIX3), asserted while the ISR status is non-zero and dropped when the
    driver reads it (§4.1.4.5). ``msi``: the VM's routing table; with it the function has
    MSI-X (:mod:`.msix`, a vector per queue and one for configuration changes, in BAR1),
    which a driver may enable instead of INTx. ``doorbells``: doorbell delivery (SYNC,
    EVENTFD or POSTED), both interfaces. ``rom``: an expansion ROM (e.g. iPXE's driver for
    this device).
    """

    def __init__(self, device: VirtioDevice, *, irq: InterruptLine | None = None,
                 msi: MsiRoutes | None = None, doorbells: Delivery = Delivery.SYNC,
                 rom: bytes | None = None) -> None:
        self.device = device
        self.irq = irq
        self.delivery = doorbells
        self.stats: Counter[str] = Counter()
        kind = device.device_id
        self.transitional = kind in TRANSITIONAL_DEVICE_IDS
        isr = InterruptStatus(None)   # its line is the function's INTx, made below
        queues = len(device.queues)
        self._msi = msi
        self.msix = Msix(min(queues + 1, MAX_VECTORS), queues) if msi is not None else None
        self._state = PciState(device, isr, self.stats, self.msix)
        self.modern = ModernRegisters(self._state)
        self.legacy = LegacyRegisters(self._state) if self.transitional else None
        bars: dict[int, Registers] = {MODERN_BAR: self.modern}
        if self.legacy is not None:
            bars[LEGACY_BAR] = self.legacy
        self.function = VirtioPciFunction(
            VIRTIO_PCI_VENDOR, pci_device_id(kind), CLASS_CODES.get(kind, 0xFF0000),
            bars=bars, config_len=max(4, len(device.config)),
            revision=0 if self.transitional else 1, subsystem_vendor=VIRTIO_PCI_VENDOR,
            subsystem=kind, interrupt_pin=1, rom=rom, on_rom_map=self._map_rom)
        if self.legacy is not None:
            self.function.add_bar(LEGACY_BAR, LEGACY_BAR_SIZE, io=True, on_map=self._map_legacy)
        if self.msix is not None:
            self.function.add_msix(self.msix)
            self.function.add_bar(MSIX_BAR, MSIX_BAR_SIZE, on_map=self._map_msix)
        self.function.add_bar(MODERN_BAR, MODERN_BAR_SIZE, mem64=True, prefetchable=True,
                              on_map=self._map_modern)
        gate = _IntxGate(irq, self.function, self.msix)
        isr.line = gate
        if self.msix is not None:
            self.msix.on_enable = gate.update
            self.msix.on_direct = device.set_call_direct
        self.function.persist = self   # the host bridge's snapshot holds this one's state
        self._intf: XInterface | None = None
        self._legacy: list[XIORange | XIOEvent] = []
        self._modern: list[XIORange | XIOEvent] = []
        self._msix_range: list[XIORange | XIOEvent] = []
        self._rom: XIORange | None = None
        self._state.reset()

    @property
    def isr(self) -> int:
        """The ISR status (§4.1.4.5): the reasons not yet read."""
        return self._state.isr.value

    # --- attach -------------------------------------------------------------------------------
    def attach(self, intf: XInterface) -> None:
        """Bind the device to guest memory; registrations follow the BARs the guest sets."""
        self._intf = intf
        self.device.connect(intf, self._interrupt, legacy=False)
        if self.msix is not None and self._msi is not None:
            self.msix.attach(intf, self._msi)
            for q in self.device.queues:
                fd = self.device.call_eventfd(q.index)
                if fd is not None:
                    self.msix.add_source(q.index, fd)

    def detach(self) -> None:
        if self.msix is not None:
            self.msix.detach()
        for entries in (self._legacy, self._modern, self._msix_range):
            for entry in entries:
                entry.deassign()
            entries.clear()
        if self._rom is not None:
            self._rom.deassign()
            self._rom = None
        self.device.disconnect()
        self._intf = None

    def _register(self, entries: list[XIORange | XIOEvent],
                  build: Callable[[XInterface], None], base: int | None, what: str) -> None:
        for entry in entries:
            entry.deassign()
        entries.clear()
        if base is None or self._intf is None:
            return
        try:
            build(self._intf)
        except XInterfaceError as exc:
            # The guest put the BAR over another device's: hardware would decode garbage;
            # we leave this BAR dark and go on.
            for entry in entries:
                entry.deassign()
            entries.clear()
            self.stats[f"{what}_map_failed"] += 1
            log.warning("%s: %s BAR at %#x left dark: %s", self.device.name, what, base,
                        exc.strerror)
            self.stats[f"last_error: {exc.strerror}"] += 1

    def _map_legacy(self, base: int | None) -> None:
        legacy = self.legacy
        assert legacy is not None

        def build(intf: XInterface) -> None:
            assert base is not None
            pio = XIOEventFlags.PIO
            self._legacy.append(intf.iorange(base, LEGACY_BAR_SIZE, pio, read=legacy.read,
                                             write=legacy.write,
                                             name=f"virtio-pci legacy {self.device.name}"))
            self._legacy.extend(register_doorbells(intf, self.device, base + L_QUEUE_NOTIFY,
                                                   2, pio, self.delivery, self.stats))
        self._register(self._legacy, build, base, "legacy_bar")

    def _map_modern(self, base: int | None) -> None:
        def build(intf: XInterface) -> None:
            assert base is not None
            self._modern.append(intf.iorange(base, MODERN_BAR_SIZE, read=self.modern.read,
                                             write=self.modern.write,
                                             name=f"virtio-pci {self.device.name}"))
            self._modern.extend(register_doorbells(intf, self.device, base + NOTIFY_OFFSET,
                                                   2, 0, self.delivery, self.stats))
        self._register(self._modern, build, base, "modern_bar")

    def _map_msix(self, base: int | None) -> None:
        msix = self.msix
        assert msix is not None

        def build(intf: XInterface) -> None:
            assert base is not None
            self._msix_range.append(intf.iorange(base, MSIX_BAR_SIZE, read=msix.read,
                                                 write=msix.write,
                                                 name=f"virtio-pci msix {self.device.name}"))
        self._register(self._msix_range, build, base, "msix_bar")

    def _map_rom(self, base: int | None) -> None:
        if self._rom is not None:
            self._rom.deassign()
            self._rom = None
        if base is None or self._intf is None or not self.function.rom:
            return
        try:
            self._rom = self._intf.iorange(base, self.function.rom_size,
                                           read=self.function.rom_read,
                                           write=lambda offset, data: None,  # ROM: dropped
                                           name=f"virtio-pci rom {self.device.name}")
        except XInterfaceError:
            self.stats["rom_map_failed"] += 1

    # --- snapshot (xinterface.devices.persist), with the host bridge's --------------------
    # The function's configuration space and BARs are the host bridge's to save and load
    # (xinterface.devices.pci.host): it loads this state between a function's configuration
    # and the registrations its BARs imply.
    def parts(self) -> list[object]:
        return [self.device]

    def covers(self, space: str, addr: int) -> bool:
        return False   # the host bridge covers the BARs

    def save(self) -> State:
        """The selectors, the ISR status, the features offered, and the device's state."""
        state = self._state
        with state.lock:
            return {"device_features": self.device.device_features,
                    "device_feature_select": state.device_feature_select,
                    "driver_feature_select": state.driver_feature_select,
                    "queue_select": state.queue_select, "isr": state.isr.value,
                    "msix": self.msix.save() if self.msix is not None else None,
                    "device": save_device(self.device, repr(self))}

    def load(self, state: State) -> None:
        selects = {name: field_int(state, name, 0, 0xFFFFFFFF) for name in (
            "device_feature_select", "driver_feature_select")}
        queue_select = field_int(state, "queue_select", 0, 0xFFFF)
        isr = field_int(state, "isr", 0, int(Interrupt.USED | Interrupt.CONFIG))
        msix = state.get("msix")
        if (msix is None) != (self.msix is None) or (msix is not None
                                                     and not isinstance(msix, dict)):
            raise bad_field("msix", msix, "does not match the function's MSI-X capability")
        load_device(self.device, state, repr(self))
        if self.msix is not None and isinstance(msix, dict):
            self.msix.load(msix)
        pci = self._state
        with pci.lock:
            pci.device_feature_select = selects["device_feature_select"]
            pci.driver_feature_select = selects["driver_feature_select"]
            pci.queue_select = queue_select
            pci.isr.restore(isr)

    def restored(self) -> None:
        restored = getattr(self.device, "restored", None)
        if restored is not None:
            restored()

    # --- interrupts ---------------------------------------------------------------------------
    def _interrupt(self, kind: Interrupt, queue: int | None = None) -> None:
        self.stats["interrupts"] += 1
        msix = self.msix
        if msix is None or not msix.enabled:
            self._state.isr.raise_(kind)
            return
        # §4.1.4.5.1: with MSI-X the ISR takes the configuration bit only (its INTx held
        # down by the gate), and each notification is its vector's message.
        if kind & Interrupt.CONFIG:
            self._state.isr.raise_(Interrupt.CONFIG)
            if not msix.fire(msix.config_vector):
                return
        if kind & Interrupt.USED:
            # Without a queue named (the device did not say), every queue's vector.
            vectors = ({msix.queue_vector(queue)} if queue is not None
                       else set(msix.queue_vectors))
            for vector in sorted(vectors):
                if not msix.fire(vector):
                    # MSI-X was disabled meanwhile: INTx as without it.
                    self._state.isr.raise_(Interrupt.USED)
                    return
        self.stats["msix_interrupts"] += 1

    def __repr__(self) -> str:
        return f"VirtioPci({self.device.name}, doorbells={self.delivery.value})"
