"""PCI configuration space (configuration mechanism #1) with the i440FX host bridge and the
PIIX3 ISA bridge, what firmware built for QEMU's ``pc`` machine expects to find.

Mechanism #1: PCI Local Bus Specification 3.0, 3.2.2.3.2: a 32-bit write to 0xcf8 latches
(enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2); 0xcfc-0xcff read or
write the addressed dword's bytes. Device identities and registers: Intel 82441FX (PMC) and
82371SB (PIIX3) datasheets. A function that does not exist reads all-ones, so firmware
probing every slot finds exactly these two.
"""

from __future__ import annotations

import threading

from ...interface import XInterface, XIOEventFlags, XIORange
from ..persist import State, bad_field, field_bytes, field_int, field_table, nested
from .config import (
    CLASS_HOST_BRIDGE,
    CLASS_ISA_BRIDGE,
    DEVICE_I440FX,
    DEVICE_PIIX3_ISA,
    HEADER_MULTIFUNCTION,
    PIIX3_PIRQ_ROUTE,
    VENDOR_INTEL,
    WRITABLE_FROM,
)
from .function import INTERRUPT_LINE, PciFunction

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
ENABLE = 1 << 31

class Bridge(PciFunction):
    """The host and ISA bridges: the header is read-only, chipset registers from 0x40 are
    plain storage (PAM, PIRQ routing) that firmware programs."""

    def write_capability(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            if WRITABLE_FROM <= offset + i < len(self.config):
                self.config[offset + i] = byte

    def writable_capability(self, offset: int) -> bool:
        return offset >= WRITABLE_FROM


class PciHost:
    """Bus 0 with 00:00.0 (i440FX host bridge), 00:01.0 (PIIX3 ISA bridge), and the
    functions :meth:`add` puts in other slots."""

    def __init__(self) -> None:
        self.host = Bridge(VENDOR_INTEL, DEVICE_I440FX, CLASS_HOST_BRIDGE)
        self.isa = Bridge(VENDOR_INTEL, DEVICE_PIIX3_ISA, CLASS_ISA_BRIDGE,
                          header_type=HEADER_MULTIFUNCTION)
        self.isa.config[PIIX3_PIRQ_ROUTE : PIIX3_PIRQ_ROUTE + 4] = b"\x80" * 4
        # (bus, device, function) -> function
        self.functions: dict[tuple[int, int, int], PciFunction] = {(0, 0, 0): self.host,
                                                                   (0, 1, 0): self.isa}
        self.address = 0
        self._lock = threading.Lock()
        self._ranges: list[XIORange] = []
        self._intf: XInterface | None = None

    def add(self, slot: int, function: PciFunction) -> None:
        """Put ``function`` at 00:slot.0 (before the guest runs)."""
        if not 2 <= slot < 32 or (0, slot, 0) in self.functions:
            raise ValueError(f"PCI slot {slot} is not free")
        self.functions[(0, slot, 0)] = function

    def route_intx(self, irqs: tuple[int, int, int, int] = (10, 10, 11, 11)
                   ) -> list[tuple[int, int, int]]:
        """Route the PIRQ links A-D to ISA IRQs ``irqs`` and write each function's Interrupt
        Line, as PC firmware does before an operating system runs (SeaBIOS's pciinit.c, with
        the same IRQs); for a kernel booted without firmware. Returns ``(slot, pin, irq)``
        for every function on bus 0 with an interrupt pin, as the MP table lists them."""
        if len(irqs) != 4 or any(not 3 <= irq <= 15 for irq in irqs):
            raise ValueError(f"PIRQ links route to ISA IRQs 3 to 15, not {irqs}")
        self.isa.config[PIIX3_PIRQ_ROUTE : PIIX3_PIRQ_ROUTE + 4] = bytes(irqs)
        routed = []
        for (bus, slot, _), function in sorted(self.functions.items()):
            pin = function.interrupt_pin
            if bus == 0 and 1 <= pin <= 4 and function not in (self.host, self.isa):
                gsi = self.pirq_gsi(slot, pin)
                assert gsi is not None
                function.config[INTERRUPT_LINE] = gsi
                routed.append((slot, pin, gsi))
        return routed

    def pirq_gsi(self, slot: int, pin: int) -> int | None:
        """The interrupt line ``pin`` (1 = INTA#) of ``slot`` reaches, as the PIIX3's PIRQ
        routing registers say now: links rotate by slot (PIRQ = (slot - 1 + pin - 1) mod 4,
        the i440FX board wiring SeaBIOS and QEMU share); bit 7 set means not routed."""
        if not 1 <= pin <= 4:
            return None
        route = self.isa.config[PIIX3_PIRQ_ROUTE + ((slot - 1 + pin - 1) & 3)]
        return None if route & 0x80 or route >= 16 else route

    def attach(self, intf: XInterface) -> None:
        self._intf = intf
        pio = XIOEventFlags.PIO
        self._ranges = [
            intf.iorange(CONFIG_ADDRESS, 4, pio, read=self._read_address,
                         write=self._write_address, name="pci address"),
            intf.iorange(CONFIG_DATA, 4, pio, read=self._read_data, write=self._write_data,
                         name="pci data"),
        ]

    def detach(self) -> None:
        for r in self._ranges:
            r.deassign()
        self._ranges = []

    def _write_address(self, offset: int, data: bytes) -> bool:
        if offset != 0 or len(data) != 4:
            return False  # byte accesses at 0xcf8-0xcfb are not the address register
        with self._lock:
            self.address = int.from_bytes(data, "little")
        return True

    def _read_address(self, offset: int, size: int) -> bytes | None:
        if offset != 0 or size != 4:
            return None
        return self.address.to_bytes(4, "little")

    def _target(self, offset: int) -> tuple[PciFunction, int] | None:
        address = self.address
        if not address & ENABLE:
            return None
        key = ((address >> 16) & 0xFF, (address >> 11) & 0x1F, (address >> 8) & 0x7)
        function = self.functions.get(key)
        if function is None:
            return None
        return function, (address & 0xFC) + offset

    def _read_data(self, offset: int, size: int) -> bytes:
        with self._lock:
            hit = self._target(offset)
        if hit is None:
            return b"\xff" * size
        function, reg = hit
        return function.read(reg, size)

    def _write_data(self, offset: int, data: bytes) -> None:
        with self._lock:
            hit = self._target(offset)
        if hit is None:
            return
        function, reg = hit
        function.write(reg, data)

    # --- snapshot (xinterface.devices.persist) -------------------------------------------------
    def _named(self) -> list[tuple[str, PciFunction]]:
        """Every function by its address (``00:03.0``), the bridges first."""
        return [(f"{b:02x}:{d:02x}.{f}", fn) for (b, d, f), fn in sorted(self.functions.items())]

    def parts(self) -> list[object]:
        return [fn.persist for _, fn in self._named() if fn.persist is not None]

    def covers(self, space: str, addr: int) -> bool:
        """An entry inside a BAR (or ROM) some function decodes: that function's device."""
        io = space == "pio"
        return any(is_io == io and base <= addr < base + size
                   for _, fn in self._named() for _, is_io, base, size in fn.decoded())

    def save(self) -> State:
        """The address latch, and per function its configuration space (the BARs, the
        command register, the PIIX3's PIRQ routing) and its device's state."""
        functions: State = {}
        for name, fn in self._named():
            with fn.lock:
                entry: State = {"config": fn.config.hex()}
            if fn.persist is not None:
                entry["state"] = fn.persist.save()
            functions[name] = entry
        return {"address": self.address, "functions": functions}

    def load(self, state: State) -> None:
        """The bridges' registers first (the PIRQ routing a device's INTx follows), then
        each function's configuration, its BARs checked (``EINVAL`` naming
        ``functions[00:03.0].bar4`` for one on top of guest RAM or of another device), its
        device's state, and last the registrations its BARs imply."""
        address = field_int(state, "address", 0, 0xFFFFFFFF)
        functions = field_table(state, "functions")
        named = self._named()
        if sorted(functions) != [name for name, _ in named]:
            raise bad_field("functions", sorted(functions), "are not the board's functions "
                            f"{[name for name, _ in named]}")
        previous = [(fn, bytes(fn.config)) for _, fn in named]
        try:
            for name, fn in named:
                entry = functions[name]
                if not isinstance(entry, dict):
                    raise bad_field(f"functions[{name}]", entry, "is not a table")
                with nested(f"functions[{name}]"):
                    config = field_bytes(entry, "config", len(fn.config))
                fn.load_config(config, f"functions[{name}]")
            self._check_windows(named)
            for name, fn in named:
                if fn.persist is not None:
                    with nested(f"functions[{name}]"):
                        fn.persist.load(field_table(functions[name], "state"))
        except BaseException:
            for fn, config in previous:   # the registers as they were, still registered so
                fn.load_config(config, "")
            raise
        with self._lock:
            self.address = address
        for _, fn in named:
            fn.remap()

    def _check_windows(self, named: list[tuple[str, PciFunction]]) -> None:
        """No decoded BAR on guest RAM, on another BAR, or on a device already there."""
        vm = self._intf.vm if self._intf is not None else None
        seen: list[tuple[str, bool, int, int]] = []
        for name, fn in named:
            for what, io, base, size in fn.decoded():
                field = f"functions[{name}].{what}"
                end = base + size
                if not io and vm is not None and vm.memory is not None:
                    for r in vm.memory.regions:
                        if r.gpa < end and base < r.end:
                            raise bad_field(field, base, f"at {base:#x}+{size:#x} is on top "
                                            f"of guest memory at {r.gpa:#x}+{r.size:#x}")
                for other, other_io, other_base, other_size in seen:
                    if other_io == io and other_base < end and base < other_base + other_size:
                        raise bad_field(field, base, f"at {base:#x}+{size:#x} overlaps "
                                        f"{other}")
                if vm is not None:
                    bus = vm.pio_bus if io else vm.mmio_bus
                    for device in bus.routes.devices:
                        if device.base < end and base < device.end:
                            raise bad_field(field, base, f"at {base:#x}+{size:#x} overlaps "
                                            f"{device!r}")
                seen.append((field, io, base, size))

    def restored(self) -> None:
        for part in self.parts():
            restored = getattr(part, "restored", None)
            if restored is not None:
                restored()
