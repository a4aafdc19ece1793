"""virtio-pci (virtio 1.2 §4.1): a virtio device as a transitional PCI function.

One function serves both interfaces, as QEMU's default transitional devices do:
- **legacy** (§4.1.4.10), I/O BAR0: the 0.9.5 register block. Its doorbell is a 2-byte
  ``outw`` of the queue index to BAR0+16: the seed's PIO xioevent with its payload.
- **modern** (§4.1.4), 64-bit memory BAR4, found through vendor capabilities: common
  configuration, notifications, ISR status, device configuration, and the PCI configuration
  access window (§4.1.4.9) for drivers that cannot reach the BAR.

``notify_off_multiplier`` is 0, so every queue's modern doorbell is the same 2-byte MMIO
address and, with SYNC delivery (the default), **one xioevent serves every queue**: the
payload says which. EVENTFD gives one ioeventfd per queue with the queue index as datamatch
(the Firecracker/QEMU design); POSTED takes doorbells through KVM's coalesced ring.

The guest owns the BAR addresses: when it moves or disables a BAR, the registrations follow
(deassign at the old address, register at the new one, through the xinterface). Interrupts
are INTx: the line is asserted while the ISR status is non-zero and dropped when the driver
reads it (§4.1.4.5), through the ``intx`` callable the board gives (level, PIIX3-routed).
No MSI-X: ``config_msix_vector`` and ``queue_msix_vector`` read VIRTIO_MSI_NO_VECTOR.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..delivery import Delivery
from ..devices.pci import PciFunction
from ..devices.pci.function import COMMAND_INTX_DISABLE
from ..errors import XInterfaceError
from ..xinterface import XInterface, XIOEvent, XIOEventFlags, XIORange
from .device import Interrupt, VirtioDevice

VIRTIO_PCI_VENDOR = 0x1AF4       # §4.1.2
# §4.1.2.3 Transitional PCI Device IDs, by virtio device type (not a formula).
TRANSITIONAL_DEVICE_IDS = {1: 0x1000, 2: 0x1001, 5: 0x1002, 3: 0x1003, 8: 0x1004, 4: 0x1005,
                           9: 0x1009}
MODERN_DEVICE_BASE = 0x1040
PCI_CAP_VENDOR = 0x09
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# §4.1.4: cfg_type of struct virtio_pci_cap
CAP_COMMON = 1
CAP_NOTIFY = 2
CAP_ISR = 3
CAP_DEVICE = 4
CAP_PCI_CFG = 5
# struct virtio_pci_cap after cap_vndr and cap_next (which add_capability writes):
# cap_len, cfg_type, bar, id, padding[2], offset, length
_CAP = struct.Struct("<BBBBxxII")

# The modern BAR's layout: one page per structure.
MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
COMMON_OFFSET, COMMON_SIZE = 0x0000, 0x3C
ISR_OFFSET, ISR_SIZE = 0x1000, 1
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET, NOTIFY_SIZE = 0x3000, 2

# §4.1.4.3 struct virtio_pci_common_cfg
CC_DEVICE_FEATURE_SELECT = 0x00
CC_DEVICE_FEATURE = 0x04
CC_DRIVER_FEATURE_SELECT = 0x08
CC_DRIVER_FEATURE = 0x0C
CC_CONFIG_MSIX_VECTOR = 0x10
CC_NUM_QUEUES = 0x12
CC_DEVICE_STATUS = 0x14
CC_CONFIG_GENERATION = 0x15
CC_QUEUE_SELECT = 0x16
CC_QUEUE_SIZE = 0x18
CC_QUEUE_MSIX_VECTOR = 0x1A
CC_QUEUE_ENABLE = 0x1C
CC_QUEUE_NOTIFY_OFF = 0x1E
CC_QUEUE_DESC = 0x20
CC_QUEUE_DRIVER = 0x28
CC_QUEUE_DEVICE = 0x30
CC_QUEUE_NOTIFY_DATA = 0x38
CC_QUEUE_RESET = 0x3A
_CC_FIELDS = {  # offset -> width
    0x00: 4, 0x04: 4, 0x08: 4, 0x0C: 4, 0x10: 2, 0x12: 2, 0x14: 1, 0x15: 1, 0x16: 2,
    0x18: 2, 0x1A: 2, 0x1C: 2, 0x1E: 2, 0x20: 8, 0x28: 8, 0x30: 8, 0x38: 2, 0x3A: 2,
}
_QUEUE_ADDRS = {CC_QUEUE_DESC: "desc_addr", CC_QUEUE_DRIVER: "avail_addr",
                CC_QUEUE_DEVICE: "used_addr"}

# §4.1.4.10 the legacy register block (without MSI-X)
LEGACY_BAR = 0
LEGACY_BAR_SIZE = 0x100
L_DEVICE_FEATURES = 0x00
L_DRIVER_FEATURES = 0x04
L_QUEUE_ADDRESS = 0x08
L_QUEUE_SIZE = 0x0C
L_QUEUE_SELECT = 0x0E
L_QUEUE_NOTIFY = 0x10
L_DEVICE_STATUS = 0x12
L_ISR = 0x13
L_CONFIG = 0x14
LEGACY_PAGE = 4096               # §4.1.4.10: the queue address is a 4096-byte page number
LEGACY_ALIGN = 4096              # §2.7.2 legacy interfaces: the used ring's alignment

# PCI class codes (PCI Code and ID Assignment Specification) per virtio device type.
CLASS_CODES = {1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0x00FF00}


def pci_device_id(device_type: int) -> int:
    """The PCI device ID of a virtio device of ``device_type`` (§4.1.2): the transitional
    ID for the types that have one (§4.1.2.3), else the modern one."""
    return TRANSITIONAL_DEVICE_IDS.get(device_type, MODERN_DEVICE_BASE + device_type)


class VirtioPci:
    """The virtio-pci transport of ``device``: its PCI function is :attr:`function`, which a
    board puts on the host bridge (``PciHost.add(slot, transport.function)``).

    ``intx(level)`` drives the function's interrupt line (the board routes INTA# through the
    PIIX3). ``notify``: doorbell delivery (SYNC, EVENTFD or POSTED), both interfaces.
    ``rom``: an expansion ROM (e.g. iPXE's driver for this device).
    """

    def __init__(self, device: VirtioDevice, *, intx: Callable[[bool], None] | None = None,
                 notify: Delivery = Delivery.SYNC, rom: bytes | None = None) -> None:
        self.device = device
        self.intx = intx
        self.delivery = notify
        self.stats: Counter[str] = Counter()
        kind = device.device_id
        transitional = kind in TRANSITIONAL_DEVICE_IDS
        pci_id = pci_device_id(kind)
        self.transitional = transitional
        self.function = _Function(self, VIRTIO_PCI_VENDOR, pci_id,
                                  CLASS_CODES.get(kind, 0xFF0000),
                                  revision=0 if transitional else 1,
                                  subsystem_vendor=VIRTIO_PCI_VENDOR, subsystem=kind,
                                  interrupt_pin=1, rom=rom, on_rom_map=self._map_rom)
        if transitional:
            self.function.add_bar(LEGACY_BAR, LEGACY_BAR_SIZE, io=True, on_map=self._map_legacy)
        self.function.add_bar(MODERN_BAR, MODERN_BAR_SIZE, mem64=True, prefetchable=True,
                              on_map=self._map_modern)
        config_len = max(4, len(device.config))
        for cfg_type, offset, length in ((CAP_COMMON, COMMON_OFFSET, COMMON_SIZE),
                                         (CAP_ISR, ISR_OFFSET, ISR_SIZE),
                                         (CAP_DEVICE, DEVICE_OFFSET, config_len)):
            self.function.add_capability(PCI_CAP_VENDOR, _cap(cfg_type, offset, length))
        # notify_off_multiplier 0: every queue's doorbell is the same address (§4.1.4.4).
        self.function.add_capability(
            PCI_CAP_VENDOR, _cap(CAP_NOTIFY, NOTIFY_OFFSET, NOTIFY_SIZE, extra=4) + bytes(4))
        self._pci_cfg = self.function.add_capability(
            PCI_CAP_VENDOR, _cap(CAP_PCI_CFG, 0, 0, bar=0, extra=4) + bytes(4))
        self._lock = threading.RLock()
        self._isr_lock = threading.Lock()
        self._intf: XInterface | None = None
        self._legacy: list[XIORange | XIOEvent] = []
        self._modern: list[XIORange | XIOEvent] = []
        self._rom: XIORange | None = None
        self._asserted = False
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.isr = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self._set_line(False)

    # --- attach -------------------------------------------------------------------------------
    def attach(self, intf: XInterface) -> None:
        """Bind the device to guest memory; registrations follow the BARs the guest sets."""
        self._intf = intf
        self.device.attach(intf, self._interrupt, legacy=False)

    def detach(self) -> None:
        for entries in (self._legacy, self._modern):
            for entry in entries:
                entry.deassign()
            entries.clear()
        if self._rom is not None:
            self._rom.deassign()
            self._rom = None
        self.device.detach()
        self._intf = None

    def _register(self, entries: list[XIORange | XIOEvent], build: Callable[[XInterface], None],
                  base: int | None, what: str) -> None:
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
            self.stats[f"last_error: {exc.strerror}"] += 1

    def _map_legacy(self, base: int | None) -> None:
        def build(intf: XInterface) -> None:
            assert base is not None
            pio = XIOEventFlags.PIO
            self._legacy.append(intf.iorange(base, LEGACY_BAR_SIZE, pio, read=self._legacy_read,
                                             write=self._legacy_write,
                                             name=f"virtio-pci legacy {self.device.name}"))
            self._doorbells(intf, self._legacy, base + L_QUEUE_NOTIFY, pio)
        self._register(self._legacy, build, base, "legacy_bar")

    def _map_modern(self, base: int | None) -> None:
        def build(intf: XInterface) -> None:
            assert base is not None
            self._modern.append(intf.iorange(base, MODERN_BAR_SIZE, read=self._modern_read,
                                             write=self._modern_write,
                                             name=f"virtio-pci {self.device.name}"))
            self._doorbells(intf, self._modern, base + NOTIFY_OFFSET, 0)
        self._register(self._modern, build, base, "modern_bar")

    def _doorbells(self, intf: XInterface, entries: list[XIORange | XIOEvent], addr: int,
                   flags: int) -> None:
        if self.delivery is Delivery.EVENTFD:
            for q in self.device.queues:
                entries.append(intf.ioevent(addr, 2, flags, delivery=Delivery.EVENTFD,
                                            datamatch=q.index, signal=self._notifier(q.index)))
        else:
            entries.append(intf.ioevent(addr, 2, flags, signal=self._doorbell,
                                        delivery=self.delivery))

    def _notifier(self, index: int) -> Callable[[XIOEvent, bytes], None]:
        device = self.device
        return lambda ev, payload: device.notify(index)

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

    def _doorbell(self, ev: XIOEvent, payload: bytes) -> None:
        # Without VIRTIO_F_NOTIFICATION_DATA the driver writes the queue index (§4.1.4.4.1).
        self.device.notify(int.from_bytes(payload, "little"))

    # --- interrupts ---------------------------------------------------------------------------
    def _interrupt(self, kind: Interrupt) -> None:
        with self._isr_lock:
            self.isr |= int(kind)
        self.stats["interrupts"] += 1
        self._set_line(True)

    def _set_line(self, level: bool) -> None:
        if level and self.function.command & COMMAND_INTX_DISABLE:
            level = False
        if level == self._asserted:
            return
        self._asserted = level
        if self.intx is not None:
            self.intx(level)

    def _read_isr(self) -> int:
        # §4.1.4.5.1: reading the ISR status clears it and de-asserts the interrupt.
        with self._isr_lock:
            value, self.isr = self.isr, 0
        self._set_line(False)
        return value

    def _device_reset(self, value: int) -> None:
        self.device.set_status(value)
        if value == 0:
            self._reset_registers()

    # --- the modern BAR -----------------------------------------------------------------------
    def _modern_read(self, offset: int, size: int) -> bytes:
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_SIZE:
            with self._lock:
                image = self._common_image()
            at = offset - COMMON_OFFSET
            return image[at : at + size].ljust(size, b"\0")
        if offset == ISR_OFFSET:
            return self._read_isr().to_bytes(1, "little").ljust(size, b"\0")
        if DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            return self.device.read_config(offset - DEVICE_OFFSET, size)
        return bytes(size)

    def _modern_write(self, offset: int, data: bytes) -> None:
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_SIZE:
            with self._lock:
                self._common_write(offset - COMMON_OFFSET, data)
        elif DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            self.device.write_config(offset - DEVICE_OFFSET, data)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + 4:
            # A doorbell no event took (another width, or another value in EVENTFD mode).
            self.device.notify(int.from_bytes(data[:2], "little"))
        else:
            self.stats["bad_access"] += 1

    def _queue(self) -> int | None:
        sel = self.queue_select
        return sel if sel < len(self.device.queues) else None

    def _common_image(self) -> bytes:
        device = self.device
        sel = self._queue()
        q = device.queues[sel] if sel is not None else None
        features = device.device_features >> (32 * self.device_feature_select) & 0xFFFFFFFF \
            if self.device_feature_select < 2 else 0
        driver = device.driver_features >> (32 * self.driver_feature_select) & 0xFFFFFFFF \
            if self.driver_feature_select < 2 else 0
        return struct.pack(
            "<IIIIHHBBHHHHHQQQHH", self.device_feature_select, features,
            self.driver_feature_select, driver, VIRTIO_MSI_NO_VECTOR, len(device.queues),
            device.status, device.config_generation & 0xFF, self.queue_select,
            q.size if q is not None else 0, VIRTIO_MSI_NO_VECTOR,
            int(q is not None and q.ready), 0, q.desc_addr if q is not None else 0,
            q.avail_addr if q is not None else 0, q.used_addr if q is not None else 0,
            sel or 0, 0)

    def _common_write(self, offset: int, data: bytes) -> None:
        field = max((f for f in _CC_FIELDS if f <= offset), default=None)
        if field is None or offset + len(data) > field + _CC_FIELDS[field]:
            self.stats["bad_access"] += 1
            return
        image = bytearray(self._common_image())
        image[offset : offset + len(data)] = data
        width = _CC_FIELDS[field]
        value = int.from_bytes(image[field : field + width], "little")
        device = self.device
        if field == CC_DEVICE_FEATURE_SELECT:
            self.device_feature_select = value
        elif field == CC_DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value
        elif field == CC_DRIVER_FEATURE:
            if self.driver_feature_select < 2:
                device.set_driver_features(self.driver_feature_select, value)
        elif field == CC_DEVICE_STATUS:
            device.legacy = False
            self._device_reset(value)
        elif field == CC_QUEUE_SELECT:
            self.queue_select = value
        elif field in (CC_QUEUE_SIZE, CC_QUEUE_ENABLE, *_QUEUE_ADDRS):
            self._queue_write(field, value)
        # msix vectors, num_queues, notify_off, config_generation, queue_reset: read-only here

    def _queue_write(self, field: int, value: int) -> None:
        sel = self._queue()
        if sel is None:
            self.stats["bad_queue_select"] += 1
            return
        q = self.device.queues[sel]
        if q.ready:
            # §4.1.4.3.2: the driver does not change a live queue's configuration.
            self.stats["live_queue_write"] += 1
            return
        if field == CC_QUEUE_SIZE:
            q.size = value
        elif field == CC_QUEUE_ENABLE:
            if value == 1:
                self.device.set_queue_ready(sel, True)
        elif field in _QUEUE_ADDRS:
            setattr(q, _QUEUE_ADDRS[field], value)

    # --- the legacy BAR -----------------------------------------------------------------------
    def _legacy_read(self, offset: int, size: int) -> bytes:
        if offset >= L_CONFIG:
            return self.device.read_config(offset - L_CONFIG, size)
        if offset == L_ISR:
            return self._read_isr().to_bytes(1, "little").ljust(size, b"\0")
        device = self.device
        with self._lock:
            sel = self._queue()
            q = device.queues[sel] if sel is not None else None
            pfn = (q.desc_addr // LEGACY_PAGE) if q is not None and q.ready else 0
            image = struct.pack("<IIIHHHBB", device.device_features & 0xFFFFFFFF,
                                device.driver_features & 0xFFFFFFFF, pfn,
                                q.max_size if q is not None else 0, self.queue_select, 0,
                                device.status, 0)
        return image[offset : offset + size].ljust(size, b"\0")

    def _legacy_write(self, offset: int, data: bytes) -> None:
        if offset >= L_CONFIG:
            self.device.write_config(offset - L_CONFIG, data)
            return
        value = int.from_bytes(data, "little")
        device = self.device
        with self._lock:
            if device.status == 0:
                device.legacy = True  # a driver of the 0.9.5 interface is talking
            if offset == L_DRIVER_FEATURES and len(data) == 4:
                device.set_driver_features(0, value)
            elif offset == L_QUEUE_SELECT and len(data) == 2:
                self.queue_select = value
            elif offset == L_QUEUE_ADDRESS and len(data) == 4:
                self._legacy_queue(value)
            elif offset == L_DEVICE_STATUS and len(data) == 1:
                self._device_reset(value)
            elif offset == L_QUEUE_NOTIFY and len(data) == 2:
                device.notify(value)
            else:
                self.stats["bad_access"] += 1

    def _legacy_queue(self, pfn: int) -> None:
        sel = self._queue()
        if sel is None:
            self.stats["bad_queue_select"] += 1
            return
        q = self.device.queues[sel]
        if pfn == 0:
            self.device.set_queue_ready(sel, False)
            return
        if q.ready:
            self.stats["live_queue_write"] += 1
            return
        # §2.7.2 (legacy): the queue has its maximum size; the descriptor table, then the
        # available ring, then the used ring at the next 4096-byte boundary.
        q.size = q.max_size
        q.desc_addr = pfn * LEGACY_PAGE
        q.avail_addr = q.desc_addr + 16 * q.size
        used = q.avail_addr + 6 + 2 * q.size
        q.used_addr = (used + LEGACY_ALIGN - 1) // LEGACY_ALIGN * LEGACY_ALIGN
        self.device.set_queue_ready(sel, True)

    # --- the PCI configuration access capability (§4.1.4.9) -----------------------------------
    def pci_cfg_access(self, offset: int, data: bytes | None, size: int) -> bytes:
        """A read (``data`` None) or write of ``pci_cfg_data`` through the capability: the
        access goes to the BAR, offset and length the driver wrote into the capability."""
        cap = self._pci_cfg
        config = self.function.config
        bar = config[cap + 4]
        at, length = struct.unpack_from("<II", config, cap + 8)
        if length not in (1, 2, 4) or bar not in (LEGACY_BAR, MODERN_BAR):
            return bytes(size)
        if bar == LEGACY_BAR and not self.transitional:
            return bytes(size)
        read = self._legacy_read if bar == LEGACY_BAR else self._modern_read
        write = self._legacy_write if bar == LEGACY_BAR else self._modern_write
        if data is None:
            return read(at, length).ljust(size, b"\0")[:size]
        write(at, data[:length])  # a doorbell this way is served by the register write
        return b""

    def __repr__(self) -> str:
        return f"VirtioPci({self.device.name}, notify={self.delivery.value})"


class _Function(PciFunction):
    """The transport's PCI function: the capability area is read-only but for the PCI
    configuration access capability's bar/offset/length and its data window."""

    def __init__(self, transport: VirtioPci, vendor: int, device: int, class_code: int,
                 **options: Any) -> None:
        self._transport = transport
        super().__init__(vendor, device, class_code, **options)

    def read(self, offset: int, size: int) -> bytes:
        cap = getattr(self._transport, "_pci_cfg", 0)
        if cap and cap + 16 <= offset < cap + 20:
            return self._transport.pci_cfg_access(offset - cap - 16, None, size)
        return super().read(offset, size)

    def write_capability(self, offset: int, data: bytes) -> None:
        cap = self._transport._pci_cfg
        if cap + 16 <= offset < cap + 20:
            self._transport.pci_cfg_access(offset - cap - 16, data, len(data))
            return
        for i, byte in enumerate(data):
            # bar (cap+4), offset (cap+8..11) and length (cap+12..15) are the driver's.
            if cap + 4 == offset + i or cap + 8 <= offset + i < cap + 16:
                self.config[offset + i] = byte


def _cap(cfg_type: int, offset: int, length: int, *, bar: int = MODERN_BAR,
         extra: int = 0) -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next: cap_len counts the whole capability."""
    return _CAP.pack(16 + extra, cfg_type, bar, 0, offset, length)

