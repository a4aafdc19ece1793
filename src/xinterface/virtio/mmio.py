"""virtio-mmio (virtio 1.2 §4.2): a virtio device's registers in a window of MMIO space.

The window is one ``iorange`` on the MMIO bus. The doorbell, QueueNotify, is an **xioevent**:
a 4-byte write whose payload is the queue index, so one registration serves every queue.
``doorbells`` picks its delivery: SYNC (the default: the vCPU's exit calls the device), POSTED
(KVM's coalesced ring; served at the guest's next exit, or by a poller), or EVENTFD (the
Firecracker/QEMU design: one ioeventfd per queue, with the queue index as datamatch). A write
no event takes (another value, another size) reaches the window and is served the same way.

``version=2`` is the modern interface; ``version=1`` the legacy one (§4.2.4: page-based
QueuePFN, guest-endian, no FEATURES_OK), for old drivers.
"""

from __future__ import annotations

import errno
import threading
from collections import Counter

from ..delivery import Delivery
from ..devices.interrupt import InterruptLine
from ..devices.persist import State, bad_field, field_int, field_list
from ..errors import XInterfaceError
from ..interface import XInterface, XIOEvent, XIORange
from .device import Interrupt, VirtioDevice
from .transport import (
    InterruptStatus,
    configurable_queue,
    feature_word,
    load_device,
    place_legacy_queue,
    register_doorbells,
    save_device,
    selected_queue,
    set_driver_feature_word,
)

MAGIC = 0x74726976  # "virt"
MMIO_WINDOW = 0x200  # registers (0x100) and up to 0x100 bytes of configuration space

# §4.2.2 MMIO Device Register Layout (and §4.2.4 for the legacy-only registers)
MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
GUEST_PAGE_SIZE = 0x028      # legacy
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_ALIGN = 0x03C          # legacy
QUEUE_PFN = 0x040            # legacy
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
QUEUE_RESET = 0x0C0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

LEGACY_PAGE_SIZE = 4096      # §4.2.4: GuestPageSize and QueueAlign before the driver sets them
NO_SHM = 0xFFFFFFFF          # §4.2.2: a region that does not exist has length and base -1

_QUEUE_ADDRS = {QUEUE_DESC_LOW: ("desc_addr", 0), QUEUE_DESC_HIGH: ("desc_addr", 32),
                QUEUE_DRIVER_LOW: ("avail_addr", 0), QUEUE_DRIVER_HIGH: ("avail_addr", 32),
                QUEUE_DEVICE_LOW: ("used_addr", 0), QUEUE_DEVICE_HIGH: ("used_addr", 32)}


class VirtioMmio:
    """The virtio-mmio transport of ``device`` at MMIO address ``base``.

    ``irq``: the interrupt line (:class:`~xinterface.devices.interrupt.InterruptLine`). Its
    level is "InterruptStatus is not zero" (a level-triggered line, as the DSDT of microvm
    declares it: a resampling irqfd, or a ``GsiLine``); each interrupt is also one trigger,
    so an edge-triggered line (an ``IrqfdLine``) misses none. None: the guest polls.
    ``doorbells``: the QueueNotify delivery (``Delivery.SYNC``, ``POSTED`` or ``EVENTFD``).
    """

    def __init__(self, device: VirtioDevice, base: int, *, irq: InterruptLine | None = None,
                 doorbells: Delivery = Delivery.SYNC, version: int = 2) -> None:
        if version not in (1, 2):
            raise XInterfaceError(errno.EINVAL, f"virtio-mmio version {version!r} is not 1 "
                                  "(legacy) or 2", argument="version", value=version)
        if not isinstance(doorbells, Delivery):
            raise XInterfaceError(errno.EINVAL, f"doorbells {doorbells!r} is not a Delivery",
                                  argument="doorbells", value=doorbells)
        self.device = device
        self.base = base
        self.irq = irq
        self.delivery = doorbells
        self.version = version
        self.stats: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._status = InterruptStatus(irq)
        self._entries: list[XIORange | XIOEvent] = []
        self._reset_registers()

    @property
    def interrupt_status(self) -> int:
        """InterruptStatus (§4.2.2): the reasons the device has interrupted for, not acked."""
        return self._status.value

    def _reset_registers(self) -> None:
        """Registers back to their values after a reset (§4.2.2.1)."""
        self._status.clear()
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.page_size = LEGACY_PAGE_SIZE
        n = len(self.device.queues)
        self._align = [LEGACY_PAGE_SIZE] * n
        self._pfn = [0] * n

    # --- attach -----------------------------------------------------------------------------
    def attach(self, intf: XInterface) -> None:
        """Register the window and the doorbell through ``intf``; attach the device."""
        self.device.connect(intf, self._interrupt, legacy=self.version == 1)
        try:
            self._entries.append(intf.iorange(self.base, MMIO_WINDOW, read=self._read,
                                              write=self._write,
                                              name=f"virtio-mmio {self.device.name}"))
            self._entries.extend(register_doorbells(intf, self.device, self.base + QUEUE_NOTIFY,
                                                    4, 0, self.delivery, self.stats))
        except BaseException:
            self.detach()
            raise

    @property
    def doorbells(self) -> list[XIOEvent]:
        """The QueueNotify events: one (SYNC, POSTED), or one per queue (EVENTFD)."""
        return [e for e in self._entries if isinstance(e, XIOEvent)]

    def detach(self) -> None:
        """Unregister (no register access or doorbell reaches the device after this returns)
        and reset the device."""
        entries, self._entries = self._entries, []
        for entry in entries:
            entry.deassign()
        self.device.disconnect()
        self._reset_registers()

    def _interrupt(self, kind: Interrupt, queue: int | None = None) -> None:
        # One InterruptStatus for every queue (§4.2.2): which queue does not matter here.
        self.stats["interrupts"] += 1
        self._status.raise_(kind)

    # --- registers --------------------------------------------------------------------------
    def _read(self, offset: int, size: int) -> bytes:
        if offset >= CONFIG:
            return self.device.read_config(offset - CONFIG, size)
        if size != 4 or offset % 4:
            # §4.2.2.2: control registers take 32-bit aligned accesses only.
            self.stats["bad_access"] += 1
            return bytes(size)
        with self._lock:
            return (self._register(offset) & 0xFFFFFFFF).to_bytes(4, "little")

    def _register(self, offset: int) -> int:
        device = self.device
        sel = self.queue_sel
        q = selected_queue(device, sel)
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION:
            return self.version
        if offset == DEVICE_ID:
            return device.device_id
        if offset == VENDOR_ID:
            return device.vendor_id
        if offset == DEVICE_FEATURES:
            return feature_word(device.device_features, self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            return device.queue_max_size(sel)
        if offset == QUEUE_READY and self.version == 2:
            return int(q is not None and q.ready)
        if offset == QUEUE_PFN and self.version == 1:
            return self._pfn[sel] if q is not None and q.ready else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return device.status
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
            return NO_SHM if self.version == 2 else 0
        if offset == CONFIG_GENERATION and self.version == 2:
            return device.config_generation
        return 0   # write-only, reserved, or QueueReset without VIRTIO_F_RING_RESET

    def _write(self, offset: int, data: bytes) -> None:
        if offset >= CONFIG:
            self.device.write_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            self.stats["bad_access"] += 1
            return
        value = int.from_bytes(data, "little")
        if offset == QUEUE_NOTIFY:
            # A doorbell no event took: another value in EVENTFD mode, or no event at all.
            self.stats["doorbell_by_window"] += 1
            self.device.notify(value)
            return
        with self._lock:
            self._write_register(offset, value)

    def _write_register(self, offset: int, value: int) -> None:
        device = self.device
        sel = self.queue_sel
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            set_driver_feature_word(device, self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == INTERRUPT_ACK:
            self._status.clear(value)
        elif offset == STATUS:
            device.set_status(value)
            if value == 0:
                # §4.2.2.1: a reset clears InterruptStatus and every queue's ready bit.
                self._reset_registers()
        elif offset == GUEST_PAGE_SIZE and self.version == 1:
            self.page_size = value
        elif offset == QUEUE_PFN and self.version == 1:
            if place_legacy_queue(device, sel, value * self.page_size, self._align[sel]
                                  if 0 <= sel < len(self._align) else 0, self.stats):
                self._pfn[sel] = value
        elif offset == QUEUE_READY and self.version == 2:
            if selected_queue(device, sel) is None:
                self.stats["bad_queue_select"] += 1
            else:
                device.set_queue_ready(sel, bool(value & 1))
        elif offset in (QUEUE_NUM, QUEUE_ALIGN, *_QUEUE_ADDRS):
            # §4.2.3.2: a live queue's configuration does not change under the device.
            q = configurable_queue(device, sel, self.stats)
            if q is None:
                return
            if offset == QUEUE_NUM:
                q.size = value
            elif offset == QUEUE_ALIGN:
                if self.version == 1:
                    self._align[sel] = value
            elif self.version == 2:
                name, shift = _QUEUE_ADDRS[offset]
                old = getattr(q, name)
                setattr(q, name, old & ~(0xFFFFFFFF << shift) | value << shift)
        elif selected_queue(device, sel) is None:
            self.stats["bad_queue_select"] += 1

    # --- snapshot (xinterface.devices.persist) -------------------------------------------------
    def parts(self) -> list[object]:
        return [self.device]

    def covers(self, space: str, addr: int) -> bool:
        """The window and its doorbell."""
        return space == "mmio" and self.base <= addr < self.base + MMIO_WINDOW

    def save(self) -> State:
        """The registers (selectors, the legacy page size, alignments and PFNs,
        InterruptStatus), the features offered, and the device's own state."""
        with self._lock:
            return {"version": self.version, "device_features": self.device.device_features,
                    "device_features_sel": self.device_features_sel,
                    "driver_features_sel": self.driver_features_sel,
                    "queue_sel": self.queue_sel, "page_size": self.page_size,
                    "align": list(self._align), "pfn": list(self._pfn),
                    "interrupt_status": self._status.value,
                    "device": save_device(self.device, repr(self))}

    def load(self, state: State) -> None:
        if field_int(state, "version", 1, 2) != self.version:
            raise bad_field("version", state.get("version"), f"is not this transport's "
                            f"{self.version}")
        n = len(self.device.queues)
        registers = {name: field_int(state, name, 0, 0xFFFFFFFF) for name in (
            "device_features_sel", "driver_features_sel", "queue_sel", "page_size")}
        align = [field_int({"align": v}, "align", 0, 0xFFFFFFFF)
                 for v in field_list(state, "align", n)]
        pfn = [field_int({"pfn": v}, "pfn", 0, 0xFFFFFFFF) for v in field_list(state, "pfn", n)]
        status = field_int(state, "interrupt_status", 0, int(Interrupt.USED | Interrupt.CONFIG))
        load_device(self.device, state, repr(self))
        with self._lock:
            for name, value in registers.items():
                setattr(self, name, value)
            self._align, self._pfn = align, pfn
            self._status.restore(status)

    def restored(self) -> None:
        restored = getattr(self.device, "restored", None)
        if restored is not None:
            restored()

    def __repr__(self) -> str:
        return (f"VirtioMmio({self.device.name} at {self.base:#x}, v{self.version}, "
                f"doorbells={self.delivery.value})")
