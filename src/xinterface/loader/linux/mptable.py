"""A minimal Intel MultiProcessor table, so a kernel without ACPI finds every vCPU and the
I/O APIC (MultiProcessor Specification 1.4, chapter 4).

What KVM's in-kernel irqchip provides: one local APIC per vCPU at 0xFEE00000 (APIC id = vCPU
index, as our CPUID says), one I/O APIC at 0xFEC00000 with 24 pins, and the default GSI
routing, where ISA IRQ n reaches I/O APIC pin n and 8259 input n (arch/x86/kvm/irq_comm.c,
``default_routing``). The table says exactly that: identity-mapped ISA interrupts, the 8259
as ExtINT on LINT0 and NMI on LINT1 of every local APIC.

With PCI functions (the pc board), a PCI bus and one interrupt entry per function's pin say
which I/O APIC pin its INTx# reaches (spec 4.3.4 and appendix D: source bus IRQ = device << 2
| pin - 1), level-triggered and active high as KVM's I/O APIC takes a raised line; the ISA
entries of those IRQs are left out, so that each such pin has one description (PCI, level)
for Linux to program. With PCI as MP bus 1 instead of 0, Linux said "can't find IRQ for PCI
INT A; probably buggy MP table" (measured; see PCI_BUS_ID).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# MP floating pointer structure (spec 4.1, Table 4-1): 16 bytes.
_FLOATING = struct.Struct("<4sIBBBB4s")
FLOATING_SIGNATURE = b"_MP_"
SPEC_REVISION = 4                # version 1.4
# MP configuration table header (4.2, Table 4-2): 44 bytes.
_HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")
TABLE_SIGNATURE = b"PCMP"
OEM_ID = b"XINTRFCE"
PRODUCT_ID = b"KVM VM      "
# Entries (4.3): processor 20 bytes, the others 8.
_PROCESSOR = struct.Struct("<BBBBII8x")
_BUS = struct.Struct("<BB6s")
_IOAPIC = struct.Struct("<BBBBI")
_INTERRUPT = struct.Struct("<BBHBBBB")
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)
CPU_ENABLED, CPU_BOOTSTRAP = 0x01, 0x02
IOAPIC_ENABLED = 0x01
INT_VECTORED, INT_NMI, INT_SMI, INT_EXTINT = range(4)   # Table 4-9
INT_FLAGS_CONFORMING = 0x0000    # polarity and trigger "conform to the bus" (edge, high: ISA)
INT_FLAGS_LEVEL_HIGH = 0x000D    # Table 4-10: polarity 01 active high, trigger 11 level
ALL_LOCAL_APICS = 0xFF

LOCAL_APIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
# Version registers of KVM's models (arch/x86/kvm/lapic.c APIC_VERSION; ioapic.c).
LOCAL_APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
# Bus IDs: Linux compares a PCI device's bus number with the MP source bus ID itself
# (arch/x86/kernel/apic/io_apic.c, IO_APIC_get_PCI_irq_vector), so PCI bus 0 is MP bus 0
# and ISA comes after it when there is PCI, else ISA is bus 0.
PCI_BUS_ID = 0
ISA_IRQS = 16
ISA_CASCADE_IRQ = 2              # the 8259 slave's input: no device interrupt arrives there
IOAPIC_PINS = 24                 # KVM's in-kernel I/O APIC (KVM_IOAPIC_NUM_PINS)


def _checksum_byte(data: bytes) -> int:
    """The byte that makes ``data`` plus it sum to 0 modulo 256 (spec 4.1, 4.2)."""
    return -sum(data) & 0xFF


def mptable(gpa: int, cpus: int, *, cpu_signature: int = 0, cpu_features: int = 0,
            pci_interrupts: Sequence[tuple[int, int, int]] = ()) -> bytes:
    """The floating pointer at ``gpa`` followed by the configuration table it points to.

    ``cpu_signature``/``cpu_features``: CPUID leaf 1 EAX and EDX, copied into each processor
    entry (Linux reads only the APIC ids and flags). ``pci_interrupts``: ``(slot, pin, irq)``
    of each PCI function on bus 0 with an interrupt pin (1 = INTA#), ``irq`` the I/O APIC pin
    its line reaches.
    """
    if not 1 <= cpus <= 254:
        raise ValueError(f"an MP table describes 1 to 254 CPUs, not {cpus}")
    for slot, pin, irq in pci_interrupts:
        if not (0 <= slot < 32 and 1 <= pin <= 4 and 0 <= irq < IOAPIC_PINS):
            raise ValueError(f"PCI interrupt (slot {slot}, pin {pin}, irq {irq}) is not one")
    pci_irqs = {irq for _, _, irq in pci_interrupts}
    isa_bus = PCI_BUS_ID + 1 if pci_interrupts else 0
    ioapic_id = cpus   # after the local APIC ids, which are 0 .. cpus-1
    entries = [
        _PROCESSOR.pack(ENTRY_PROCESSOR, index, LOCAL_APIC_VERSION,
                        CPU_ENABLED | (CPU_BOOTSTRAP if index == 0 else 0),
                        cpu_signature, cpu_features)
        for index in range(cpus)
    ]
    if pci_interrupts:
        entries.append(_BUS.pack(ENTRY_BUS, PCI_BUS_ID, b"PCI   "))
    entries.append(_BUS.pack(ENTRY_BUS, isa_bus, b"ISA   "))
    entries.append(_IOAPIC.pack(ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED,
                                IOAPIC_ADDR))
    entries.extend(
        _INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_VECTORED, INT_FLAGS_CONFORMING, isa_bus, irq,
                        ioapic_id, irq)
        for irq in range(ISA_IRQS) if irq != ISA_CASCADE_IRQ and irq not in pci_irqs
    )
    entries.extend(
        _INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_VECTORED, INT_FLAGS_LEVEL_HIGH, PCI_BUS_ID,
                        slot << 2 | (pin - 1), ioapic_id, irq)
        for slot, pin, irq in pci_interrupts
    )
    # The MP table names a source bus and IRQ for every pin; above the ISA range the ISA bus
    # carries the pin number, which is what Linux maps a GSI by (arch/x86/kernel/mpparse.c).
    entries.extend(
        _INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_VECTORED, INT_FLAGS_LEVEL_HIGH, isa_bus, pin,
                        ioapic_id, pin)
        for pin in range(ISA_IRQS, IOAPIC_PINS)
    )
    entries.append(_INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_EXTINT, INT_FLAGS_CONFORMING,
                                   isa_bus, 0, ALL_LOCAL_APICS, 0))
    entries.append(_INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_NMI, INT_FLAGS_CONFORMING,
                                   isa_bus, 0, ALL_LOCAL_APICS, 1))
    body = b"".join(entries)
    table_gpa = gpa + _FLOATING.size
    length = _HEADER.size + len(body)
    header = _HEADER.pack(TABLE_SIGNATURE, length, SPEC_REVISION, 0, OEM_ID, PRODUCT_ID, 0, 0,
                          len(entries), LOCAL_APIC_ADDR, 0, 0, 0)
    header = header[:7] + bytes([_checksum_byte(header + body)]) + header[8:]
    floating = _FLOATING.pack(FLOATING_SIGNATURE, table_gpa, 1, SPEC_REVISION, 0, 0, bytes(4))
    floating = floating[:10] + bytes([_checksum_byte(floating)]) + floating[11:]
    return floating + header + body
