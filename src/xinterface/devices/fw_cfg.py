"""QEMU's firmware configuration interface (fw_cfg), x86 I/O port flavour.

Specification: QEMU ``docs/specs/fw_cfg.rst``. Ports: selector 0x510 (16-bit write), data
0x511 (8-bit reads of the selected item), DMA address 0x514 (64-bit, big-endian, as two 32-bit
writes; the write of the low half, at 0x518, starts the transfer). The DMA descriptor's
guest-physical address is the payload of that write: an xioevent delivers it, which an
ioeventfd could not. Guest memory is read and written only through ``copy_from``/``copy_to``;
a bad descriptor sets the error bit and never raises in the VMM.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from ..errors import XInterfaceError
from ..interface import XInterface, XIOEvent, XIOEventFlags, XIORange
from .persist import State, field_int

log = logging.getLogger(__name__)

SELECTOR_PORT = 0x510
DATA_PORT = 0x511
DMA_PORT = 0x514           # high 32 bits of the descriptor address (big-endian)
DMA_PORT_LOW = 0x518       # low 32 bits; this write starts the transfer

# Selector keys (fw_cfg.rst, "Selector Register").
FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019
FW_CFG_FILE_FIRST = 0x0020

FW_CFG_ID_TRADITIONAL = 1 << 0
FW_CFG_ID_DMA = 1 << 1
DMA_SIGNATURE = b"QEMU CFG"  # what a read of the DMA port returns (big-endian 64-bit)

# FWCfgDmaAccess.control bits (fw_cfg.rst, "DMA interface").
DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10
_DMA_KNOWN = DMA_CTL_ERROR | DMA_CTL_READ | DMA_CTL_SKIP | DMA_CTL_SELECT | DMA_CTL_WRITE
_DMA_DESCRIPTOR = struct.Struct(">IIQ")  # control, length, address
_FILE_NAME_MAX = 56
_ZERO_CHUNK = 1 << 16

# e820 entry types (ACPI spec, "System Address Map Interfaces").
E820_RAM = 1
E820_RESERVED = 2


def e820_table(regions: list[tuple[int, int, int]]) -> bytes:
    """``etc/e820``: (addr, length, type) entries, each 8+8+4 bytes little-endian."""
    return b"".join(struct.pack("<QQI", a, n, t) for a, n, t in regions)


@dataclass
class FwCfg:
    """The item store and the device. Add items before :meth:`attach`."""

    items: dict[int, bytes] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # name -> selector
    dma_errors: int = 0
    selector: int = 0
    offset: int = 0
    _dma_high: int = 0
    _intf: XInterface | None = None
    _entries: list[XIOEvent | XIORange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.items.setdefault(FW_CFG_SIGNATURE, b"QEMU")
        self.items.setdefault(FW_CFG_ID,
                              struct.pack("<I", FW_CFG_ID_TRADITIONAL | FW_CFG_ID_DMA))

    def add_file(self, name: str, data: bytes) -> None:
        if len(name.encode()) >= _FILE_NAME_MAX:
            raise ValueError(f"fw_cfg file name {name!r} is longer than {_FILE_NAME_MAX - 1}")
        key = self.files.get(name, FW_CFG_FILE_FIRST + len(self.files))
        self.files[name] = key
        self.items[key] = data
        self.items[FW_CFG_FILE_DIR] = self._directory()

    def _directory(self) -> bytes:
        out = [struct.pack(">I", len(self.files))]
        for name, key in sorted(self.files.items(), key=lambda kv: kv[1]):
            out.append(struct.pack(">IHH56s", len(self.items[key]), key, 0, name.encode()))
        return b"".join(out)

    # --- the device ----------------------------------------------------------------------------
    def attach(self, intf: XInterface) -> None:
        self._intf = intf
        pio = XIOEventFlags.PIO
        self._entries = [
            intf.ioevent(SELECTOR_PORT, 2, pio, signal=self._select),
            intf.iorange(DATA_PORT, 1, pio, read=self._read_data, write=self._dropped,
                         name="fw_cfg data"),
            intf.ioevent(DMA_PORT, 4, pio, signal=self._dma_high_write),
            intf.ioevent(DMA_PORT_LOW, 4, pio, signal=self._dma_low_write),
            intf.iorange(DMA_PORT, 8, pio, read=self._read_dma_signature,
                         write=self._dropped, name="fw_cfg dma"),
        ]

    def detach(self) -> None:
        for entry in self._entries:
            entry.deassign()
        self._entries = []

    def _dropped(self, offset: int, data: bytes) -> None:
        """Writes to the data and DMA ports that are not a transfer: ignored, as QEMU does
        (a bound method, so a snapshot finds this device as the entry's owner)."""

    # --- snapshot (xinterface.devices.persist) -------------------------------------------------
    def save(self) -> State:
        """What the guest set: the item selected, the read offset in it, and the high half
        of a DMA address written without its low half yet. The items themselves are the
        board's, made again from the same description."""
        # Any offset past an item's end reads zeros: a guest's endless skips save as the
        # largest offset load() takes, which reads the same.
        return {"selector": self.selector, "offset": min(self.offset, (1 << 64) - 1),
                "dma_high": self._dma_high}

    def load(self, state: State) -> None:
        selector = field_int(state, "selector", 0, 0xFFFF)
        offset = field_int(state, "offset", 0, (1 << 64) - 1)
        dma_high = field_int(state, "dma_high", 0, 0xFFFFFFFF)
        self.selector, self.offset, self._dma_high = selector, offset, dma_high

    def _select(self, ev: XIOEvent, payload: bytes) -> None:
        self.selector = int.from_bytes(payload, "little")
        self.offset = 0

    def _read_data(self, offset: int, size: int) -> bytes:
        item = self.items.get(self.selector, b"")
        out = item[self.offset : self.offset + size].ljust(size, b"\0")
        self.offset += size
        return out

    def _read_dma_signature(self, offset: int, size: int) -> bytes:
        return DMA_SIGNATURE[offset : offset + size].ljust(size, b"\0")

    def _dma_high_write(self, ev: XIOEvent, payload: bytes) -> None:
        self._dma_high = int.from_bytes(payload, "big")

    def _dma_low_write(self, ev: XIOEvent, payload: bytes) -> None:
        address = (self._dma_high << 32) | int.from_bytes(payload, "big")
        self._dma_high = 0
        self.dma(address)

    def dma(self, address: int) -> None:
        """Run the descriptor at ``address``; errors end in the descriptor's error bit."""
        assert self._intf is not None
        intf = self._intf
        try:
            control, length, target = _DMA_DESCRIPTOR.unpack(
                intf.copy_from(address, _DMA_DESCRIPTOR.size))
        except XInterfaceError:
            self.dma_errors += 1  # nowhere to report it: the descriptor is not in RAM
            log.warning("fw_cfg: DMA descriptor at %#x is outside guest RAM", address)
            return
        ok = self._transfer(control, length, target)
        if not ok:
            self.dma_errors += 1
            log.warning("fw_cfg: DMA control %#x (item %#x, %d bytes to %#x) failed",
                        control, self.selector, length, target)
        try:
            intf.copy_to(address, struct.pack(">I", 0 if ok else DMA_CTL_ERROR))
        except XInterfaceError:
            self.dma_errors += 1

    def _transfer(self, control: int, length: int, target: int) -> bool:
        assert self._intf is not None
        if control & ~_DMA_KNOWN & 0xFFFF or control & DMA_CTL_ERROR:
            return False
        if control & DMA_CTL_SELECT:
            self.selector = control >> 16
            self.offset = 0
        item = self.items.get(self.selector, b"")
        if control & DMA_CTL_WRITE:
            return False  # every item here is read-only, as in QEMU without writable files
        if control & DMA_CTL_READ:
            data = item[self.offset : self.offset + length]
            try:
                self._intf.copy_to(target, data)
                # Past the item's end the guest reads zeros; written in chunks, so a huge
                # length costs no huge buffer and stops at the first byte outside RAM.
                done = len(data)
                while done < length:
                    n = min(_ZERO_CHUNK, length - done)
                    self._intf.copy_to(target + done, bytes(n))
                    done += n
            except XInterfaceError:
                return False
            self.offset += length
        elif control & DMA_CTL_SKIP:
            self.offset += length
        return True
