"""virtio-mmio (virtio 1.2 §4.2): a virtio device's registers in a window of MMIO space.

The window is one ``iorange`` on the MMIO bus. The doorbell, QueueNotify, is an **xioevent**:
a 4-byte write whose payload is the queue index, so one registration serves every queue.
``notify`` picks its delivery: SYNC (the default: the vCPU's exit calls the device), POSTED
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
from collections.abc import Callable

from ..delivery import Delivery
from ..errors import XInterfaceError
from ..xinterface import XInterface, XIOEvent, XIORange
from .device import Interrupt, VirtioDevice

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

    The interrupt, either way: ``irq()`` pulses an edge-triggered line (a board passes an
    irqfd's ``trigger``), once for each interrupt, so none is missed; ``line(level)`` drives a
    level-triggered one (``lambda level: intf.set_irq(gsi, level)``), asserted while
    InterruptStatus is not zero, as the DSDT of microvm declares it.
    ``notify``: the QueueNotify delivery (``Delivery.SYNC``, ``POSTED`` or ``EVENTFD``).
    """

    def __init__(self, device: VirtioDevice, base: int, *, irq: Callable[[], None] | None = None,
                 line: Callable[[bool], None] | None = None,
                 notify: Delivery = Delivery.SYNC, version: int = 2) -> None:
        if version not in (1, 2):
            raise XInterfaceError(errno.EINVAL, f"virtio-mmio version {version!r} is not 1 "
                                  "(legacy) or 2", argument="version", value=version)
        if not isinstance(notify, Delivery):
            raise XInterfaceError(errno.EINVAL, f"notify {notify!r} is not a Delivery",
                                  argument="notify", value=notify)
        self.device = device
        self.base = base
        self.irq = irq
        self.line = line
        self.delivery = notify
        self.version = version
        self.stats: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._isr_lock = threading.Lock()
        self._entries: list[XIORange | XIOEvent] = []
        self.interrupt_status = 0
        self._reset_registers()

    def _reset_registers(self) -> None:
        """Registers back to their values after a reset (§4.2.2.1); takes the ISR lock."""
        with self._isr_lock:
            self._set_interrupt_status(0)
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
        self.device.attach(intf, self._interrupt, legacy=self.version == 1)
        notify = self.base + QUEUE_NOTIFY
        try:
            self._entries.append(intf.iorange(self.base, MMIO_WINDOW, read=self._read,
                                              write=self._write,
                                              name=f"virtio-mmio {self.device.name}"))
            if self.delivery is Delivery.EVENTFD:
                for q in self.device.queues:
                    self._entries.append(intf.ioevent(
                        notify, 4, signal=self._notifier(q.index), delivery=Delivery.EVENTFD,
                        datamatch=q.index))
            else:
                self._entries.append(intf.ioevent(notify, 4, signal=self._doorbell,
                                                  delivery=self.delivery))
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
        self.device.detach()
        self._reset_registers()

    def _doorbell(self, ev: XIOEvent, payload: bytes) -> None:
        # Without VIRTIO_F_NOTIFICATION_DATA the value written is the queue index (§4.2.2).
        self.stats["doorbell"] += 1
        self.device.notify(int.from_bytes(payload, "little"))

    def _notifier(self, index: int) -> Callable[[XIOEvent, bytes], None]:
        device = self.device
        stats = self.stats

        def ring(ev: XIOEvent, payload: bytes) -> None:
            stats["doorbell"] += 1
            device.notify(index)
        return ring

    def _interrupt(self, kind: Interrupt) -> None:
        with self._isr_lock:
            self._set_interrupt_status(self.interrupt_status | int(kind))
        self.stats["interrupts"] += 1
        if self.irq is not None:
            self.irq()

    def _set_interrupt_status(self, value: int) -> None:
        """(Under the ISR lock.) The level line follows InterruptStatus; it is driven under
        the lock so that the line's changes keep the order of the status's."""
        old = self.interrupt_status
        self.interrupt_status = value
        if self.line is not None and bool(old) != bool(value):
            self.line(bool(value))

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
        queues = device.queues
        sel = self.queue_sel
        q = queues[sel] if sel < len(queues) else None
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION:
            return self.version
        if offset == DEVICE_ID:
            return device.device_id
        if offset == VENDOR_ID:
            return device.vendor_id
        if offset == DEVICE_FEATURES:
            return device.device_features >> (32 * self.device_features_sel)
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
        queues = device.queues
        sel = self.queue_sel
        q = queues[sel] if sel < len(queues) else None
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            device.set_driver_features(self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == INTERRUPT_ACK:
            with self._isr_lock:
                self._set_interrupt_status(self.interrupt_status & ~value)
        elif offset == STATUS:
            device.set_status(value)
            if value == 0:
                # §4.2.2.1: a reset clears InterruptStatus and every queue's ready bit.
                self._reset_registers()
        elif offset == GUEST_PAGE_SIZE and self.version == 1:
            self.page_size = value
        elif q is None:
            self.stats["bad_queue_sel"] += 1
        elif q.ready and offset in (QUEUE_NUM, QUEUE_ALIGN, *_QUEUE_ADDRS):
            # §4.2.3.2: a live queue's configuration does not change under the device.
            self.stats["live_queue_write"] += 1
        elif offset == QUEUE_NUM:
            q.size = value
        elif self.version == 2:
            self._write_modern_queue(offset, value, sel)
        else:
            self._write_legacy_queue(offset, value, sel)

    def _write_modern_queue(self, offset: int, value: int, sel: int) -> None:
        q = self.device.queues[sel]
        if offset == QUEUE_READY:
            self.device.set_queue_ready(sel, bool(value & 1))
        elif offset in _QUEUE_ADDRS:
            name, shift = _QUEUE_ADDRS[offset]
            old = getattr(q, name)
            setattr(q, name, old & ~(0xFFFFFFFF << shift) | value << shift)

    def _write_legacy_queue(self, offset: int, value: int, sel: int) -> None:
        q = self.device.queues[sel]
        if offset == QUEUE_ALIGN:
            self._align[sel] = value
        elif offset == QUEUE_PFN:
            if value == 0:
                self.device.set_queue_ready(sel, False)
                self._pfn[sel] = 0
                return
            if q.ready:
                self.stats["live_queue_write"] += 1
                return
            # §2.7.2 legacy layout: the descriptor table, the available ring right after it,
            # the used ring at the next QueueAlign boundary.
            align = self._align[sel] if self._align[sel] > 0 else LEGACY_PAGE_SIZE
            q.desc_addr = value * self.page_size
            q.avail_addr = q.desc_addr + 16 * q.size
            used = q.avail_addr + 6 + 2 * q.size
            q.used_addr = (used + align - 1) // align * align
            self._pfn[sel] = value
            self.device.set_queue_ready(sel, True)

    def __repr__(self) -> str:
        return (f"VirtioMmio({self.device.name} at {self.base:#x}, v{self.version}, "
                f"notify={self.delivery.value})")
