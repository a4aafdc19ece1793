"""ACPI tables: the AML encoder against Debian's iasl (acpica-tools), the tables' checksums, and
the table-loader run the way SeaBIOS runs it, by a reader written here from the format."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import needs_kvm
from xinterface.devices.acpi import aml, dsdt, loader, tables
from xinterface.errors import XInterfaceError

# .ci/run installs acpica-tools (scripts/debian-packages.txt): these tests never skip.
IASL = shutil.which("iasl") or "/usr/bin/iasl"

VIRTIO = [(0xFEB00000, 0x200, 16), (0xFEB00200, 0x200, 17), (0xFEB00400, 0x200, 18)]


def iasl(*args: str | Path, cwd: Path) -> str:
    assert Path(IASL).exists(), "iasl is missing: apt-get install acpica-tools"
    done = subprocess.run([IASL, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def disassemble(table: bytes, tmp_path: Path, name: str) -> str:
    """``iasl -d``: the .dsl text; fails on any warning or error iasl prints (a wrong checksum
    is a "Firmware Warning")."""
    (tmp_path / f"{name}.dat").write_bytes(table)
    log = iasl("-d", f"{name}.dat", cwd=tmp_path)
    assert "Warning" not in log and "Error" not in log.replace("0 Errors", ""), log
    text = (tmp_path / f"{name}.dsl").read_text()
    assert "Incorrect checksum" not in text
    assert "terminates in the middle" not in text
    return text


def compile_asl(source: str, tmp_path: Path, name: str) -> bytes:
    """Compile ASL (or a data table source) with iasl, named-reference optimisation off so that
    ``\\_SB`` stays as written."""
    (tmp_path / f"{name}.asl").write_text(source)
    log = iasl("-on", f"{name}.asl", cwd=tmp_path)
    assert "0 Errors, 0 Warnings" in log, log
    return (tmp_path / f"{name}.aml").read_bytes()


def same_but_creator(ours: bytes, theirs: bytes) -> None:
    """iasl writes its own creator ID and revision (header bytes 28-35), hence its own
    checksum: everything else must be byte for byte ours, and both tables must sum to zero."""
    assert sum(ours) & 0xFF == 0 and sum(theirs) & 0xFF == 0
    assert ours[:9] + ours[10:28] + ours[36:] == theirs[:9] + theirs[10:28] + theirs[36:]


# --- the AML encoder ---------------------------------------------------------------------------

BRIEF_ASL = """
DefinitionBlock ("", "DSDT", 2, "XINTF ", "XINTERFC", 1)
{
    Device (VR00)
    {
        Name (_HID, "LNRO0005")
        Name (_UID, 0)
        Name (_CCA, One)
        Name (_CRS, ResourceTemplate ()
        {
            Memory32Fixed (ReadWrite, 0xFEB00000, 0x200)
            Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { 16 }
        })
    }
}
"""


def test_virtio_mmio_device_is_what_iasl_compiles(tmp_path: Path) -> None:
    ours = tables.dsdt([dsdt.virtio_mmio(0, 0xFEB00000, 0x200, 16)])
    same_but_creator(ours, compile_asl(BRIEF_ASL, tmp_path, "brief"))


CONSTRUCTS_ASL = """
DefinitionBlock ("", "DSDT", 2, "XINTF ", "XINTERFC", 1)
{
    Scope (\\_SB)
    {
        Device (COM1)
        {
            Name (_HID, EisaId ("PNP0501"))
            Name (_UID, One)
            Method (_STA, 0, NotSerialized) { Return (0x0F) }
            Method (SER, 2, Serialized, 3) { Return ("ok") }
            Name (_CRS, ResourceTemplate ()
            {
                IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
                IRQNoFlags () {4}
                Interrupt (ResourceProducer, Edge, ActiveLow, Shared) { 5, 0xFFFFFFFF }
                Memory32Fixed (ReadOnly, 0, 0xFFFFFFFF)
                IO (Decode10, 0, 0xFFFF, 0xFF, 0xFF)
            })
        }
    }
    Device (\\_SB.COM1.SUB)
    {
        Name (_ADR, 0x00020001)
        Name (INTS, Package () { 0, 1, 2, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF,
                                 0x100000000, 0xFFFFFFFFFFFFFFFF, "", "a string" })
        Name (ALL1, Ones)
        BUFFERS
    }
    Scope (\\_SB.COM1.SUB) { Name (\\_SB.COM1.SUB.DEEP, Zero) }
    Scope (\\) { Name (_S5, Package (4) { 5, 0, 0, 0 }) }
}
"""


# Buffer sizes around PkgLength's 1/2/3-byte boundaries (a Buffer's package holds the PkgLength,
# the size term and the bytes).
BUFFER_SIZES = [0, 1, 58, 59, 60, 61, 62, 63, 4088, 4089, 4090, 4091, 9000]


def pattern(size: int) -> bytes:
    return bytes(i * 7 & 0xFF for i in range(size))


def test_aml_constructs_are_what_iasl_compiles(tmp_path: Path) -> None:
    ints = [0, 1, 2, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000, (1 << 64) - 1]
    buffers = [(f"B{i:03X}", size) for i, size in enumerate(BUFFER_SIZES)]
    asl_buffers = "\n".join(
        f"Name ({n}, Buffer () {{{', '.join(str(b) for b in pattern(size))}}})"
        for n, size in buffers)
    ours = tables.dsdt([
        aml.scope("\\_SB", [aml.device("COM1", [
            aml.name("_HID", aml.eisaid_term("PNP0501")),
            aml.name("_UID", aml.integer(1)),
            aml.method("_STA", [aml.return_(aml.integer(0x0F))]),
            aml.method("SER", [aml.return_(aml.string("ok"))], args=2, serialized=True,
                       sync_level=3),
            aml.name("_CRS", aml.resource_template([
                aml.io(0x3F8, 0x3F8, 0, 8),
                aml.irq_no_flags([4]),
                aml.interrupt([5, 0xFFFFFFFF], consumer=False, edge=True, active_low=True,
                              shared=True),
                aml.memory32_fixed(0, 0xFFFFFFFF, writable=False),
                aml.io(0, 0xFFFF, 0xFF, 0xFF, decode16=False),
            ])),
        ])]),
        aml.device("\\_SB.COM1.SUB", [
            aml.name("_ADR", aml.integer(0x00020001)),
            aml.name("INTS", aml.package([aml.integer(i) for i in ints]
                                         + [aml.string(""), aml.string("a string")])),
            aml.name("ALL1", aml.ones()),
            *(aml.name(n, aml.buffer(pattern(size))) for n, size in buffers),
        ]),
        aml.scope("\\_SB.COM1.SUB", [aml.name("\\_SB.COM1.SUB.DEEP", aml.integer(0))]),
        aml.scope("\\", [aml.name("_S5", aml.package([aml.integer(v) for v in (5, 0, 0, 0)]))]),
    ])
    source = CONSTRUCTS_ASL.replace("BUFFERS", asl_buffers)
    same_but_creator(ours, compile_asl(source, tmp_path, "constructs"))


def decode_pkg_length(data: bytes) -> tuple[int, int]:
    """(PkgLength value, bytes it took), read as ACPI 6.5 section 20.2.4 defines it."""
    follow = data[0] >> 6
    if follow == 0:
        return data[0] & 0x3F, 1
    assert data[0] & 0x30 == 0  # bits 5-4 must be zero in a multi-byte PkgLength
    value = data[0] & 0x0F
    for i in range(follow):
        value |= data[1 + i] << (4 + 8 * i)
    return value, 1 + follow


@given(st.integers(min_value=0, max_value=(1 << 28) - 5))
def test_pkg_length_round_trips_and_is_shortest(body: int) -> None:
    encoded = aml.pkg_length(body)
    value, used = decode_pkg_length(encoded)
    assert used == len(encoded)
    assert value == body + used                 # the length counts its own bytes
    shortest = next(n for n, limit in ((1, 1 << 6), (2, 1 << 12), (3, 1 << 20), (4, 1 << 28))
                    if body + n < limit)
    assert used == shortest


def test_pkg_length_limits() -> None:
    with pytest.raises(XInterfaceError) as info:
        aml.pkg_length(1 << 28)
    assert info.value.argument == "body"
    assert aml.pkg_length(62) == b"\x3f"
    assert aml.pkg_length(63) == b"\x41\x04"     # 65 = 0x41: lead nibble 1, next byte 4


def test_name_strings() -> None:
    assert aml.name_string("_HID") == b"_HID"
    assert aml.name_string("COM") == b"COM_"
    assert aml.name_string("\\") == b"\\\0"
    assert aml.name_string("^^PCI0") == b"^^PCI0"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"


@pytest.mark.parametrize("bad", ["", "1ABC", "ABCDE", "ab", "A..B", "A-B"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(XInterfaceError) as info:
        aml.name_string(bad) if bad else aml.name_seg(bad)
    assert info.value.argument == "name"


def test_eisaid() -> None:
    assert aml.eisaid("PNP0501") == 0x0105D041   # what ASL's EisaId ("PNP0501") yields
    assert aml.eisaid("PNP0B00") == 0x000BD041
    assert aml.eisaid_term("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    with pytest.raises(XInterfaceError):
        aml.eisaid("pnp0501")


def test_bad_values_are_refused() -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: aml.integer(-1), "integer"),
        (lambda: aml.integer(1 << 64), "integer"),
        (lambda: aml.string("caf\u00e9"), "string"),
        (lambda: aml.string("a\0b"), "string"),
        (lambda: aml.package([aml.integer(0)] * 256), "package"),
        (lambda: aml.method("M", [], args=8), "args"),
        (lambda: aml.interrupt([]), "gsis"),
        (lambda: aml.interrupt([1 << 32]), "gsis"),
        (lambda: aml.memory32_fixed(1 << 32, 1), "base"),
        (lambda: aml.io(0x10000, 0, 0, 1), "minimum"),
        (lambda: aml.irq_no_flags([16]), "irqs"),
        (lambda: dsdt.virtio_mmio(256, 0, 0x200, 16), "index"),
    ]
    for call, argument in cases:
        with pytest.raises(XInterfaceError) as info:
            call()
        assert info.value.argument == argument, argument
        assert info.value.errno == 22


def test_resource_template_end_tag_checksum() -> None:
    items = [aml.memory32_fixed(0xFEB00000, 0x200), aml.interrupt([16])]
    plain = aml.resource_template(items)
    summed = aml.resource_template(items, checksum=True)
    assert plain[-2:] == b"\x79\x00"            # iasl's choice: 0 means "valid"
    data = summed[3:]                           # BufferOp, PkgLength, ByteConst size
    assert summed[2] == 0x0A and summed[3] == len(summed) - 4
    assert sum(data[1:]) & 0xFF == 0 and summed[-2] == 0x79


# --- the tables --------------------------------------------------------------------------------

def test_each_table_disassembles_cleanly(tmp_path: Path) -> None:
    text = disassemble(tables.dsdt(dsdt.microvm(VIRTIO)), tmp_path, "dsdt")
    for i, (base, size, gsi) in enumerate(VIRTIO):
        device = text.split(f"Device (VR{i:02X})")[1].split("Device (")[0]
        assert 'Name (_HID, "LNRO0005")' in device
        assert f"Name (_UID, {['Zero', 'One', '0x02'][i]})" in device
        assert "Name (_CCA, One)" in device
        assert f"0x{base:08X},         // Address Base" in device
        assert f"0x{size:08X},         // Address Length" in device
        assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )" in device
        assert f"0x{gsi:08X}," in device
    assert 'Name (_HID, EisaId ("PNP0501")' in text     # COM1
    assert 'Name (_HID, EisaId ("PNP0B00")' in text     # RTC
    assert 'Name (_HID, "QEMU0002")' in text            # fw_cfg

    fadt = disassemble(tables.fadt(0x7FE0000, revision=6, reset=(0xCF9, 6)), tmp_path, "facp")
    assert "[028h 0040   4]                 DSDT Address : 07FE0000" in fadt
    assert "[08Ch 0140   8]                 DSDT Address : 0000000007FE0000" in fadt
    assert "Hardware Reduced (V5) : 1" in fadt
    assert "Reset Register Supported (V2) : 1" in fadt
    assert "Address : 0000000000000CF9" in fadt

    overrides = [tables.IRQ0_OVERRIDE, tables.Override(9, 9, tables.MPS_INTI_LEVEL_HIGH)]
    madt = disassemble(tables.madt(3, overrides=overrides), tmp_path, "apic")
    assert madt.count("[Processor Local APIC]") == 3
    assert "Local Apic ID : 02" in madt
    assert "Address : FEC00000" in madt and "[I/O APIC]" in madt
    assert madt.count("[Interrupt Source Override]") == 2
    assert "Polarity : 1" in madt and "Trigger Mode : 3" in madt   # IRQ 9: high, level
    assert "[Local APIC NMI]" in madt

    xsdt = disassemble(tables.xsdt([0x1000, 0x123456789]), tmp_path, "xsdt")
    assert "ACPI Table Address   1 : 0000000123456789" in xsdt
    rsdt = disassemble(tables.rsdt([0x1000, 0x2000]), tmp_path, "rsdt")
    assert "ACPI Table Address   1 : 00002000" in rsdt


def test_tables_round_trip_through_iasl(tmp_path: Path) -> None:
    # Disassemble, compile back: the same bytes (iasl's own creator fields aside). For the
    # data tables this also has iasl recompute the checksum.
    for name, table in [("dsdt", tables.dsdt(dsdt.microvm(VIRTIO))),
                        ("facp", tables.fadt(0x7FE0000, revision=6, reset=(0xCF9, 6))),
                        ("apic", tables.madt(2)),
                        ("xsdt", tables.xsdt([0x1000, 0x2000])),
                        ("rsdt", tables.rsdt([0x1000, 0x2000]))]:
        disassemble(table, tmp_path, name)
        dsl = (tmp_path / f"{name}.dsl").read_text()
        same_but_creator(table, compile_asl(dsl, tmp_path, f"{name}2"))


def test_rsdp_is_what_iasl_compiles(tmp_path: Path) -> None:
    # iasl cannot disassemble a bare RSDP, but its data table compiler builds one and computes
    # both checksums: ours must be the same bytes.
    source = """
[0008]                          Signature : "RSD PTR "
[0001]                           Checksum : 00
[0006]                             Oem ID : "XINTF "
[0001]                           Revision : 02
[0004]                       RSDT Address : 07FE1234
[0004]                             Length : 00000024
[0008]                       XSDT Address : 0000000107FE5678
[0001]                  Extended Checksum : 00
[0003]                           Reserved : 000000
"""
    assert tables.rsdp(0x107FE5678, 0x7FE1234) == compile_asl(source, tmp_path, "rsdp")


def test_fadt_revisions() -> None:
    for revision, length in ((5, 268), (6, 276)):
        table = tables.fadt(0x1000, revision=revision)
        assert len(table) == length and table[8] == revision and sum(table) & 0xFF == 0
        flags, = struct.unpack_from("<I", table, tables.FADT_FLAGS_OFFSET)
        assert flags == tables.FADT_F_HW_REDUCED_ACPI   # no reset register given
    with pytest.raises(XInterfaceError) as info:
        tables.fadt(0x1000, revision=4)
    assert info.value.argument == "revision"
    with pytest.raises(XInterfaceError) as info:
        tables.fadt(1 << 32)
    assert info.value.argument == "dsdt_address"
    with pytest.raises(XInterfaceError) as info:
        tables.madt(0)
    assert info.value.argument == "cpus"


# --- the table-loader, run as the firmware runs it ---------------------------------------------

@dataclass
class Command:
    kind: int
    fields: tuple[object, ...]


def read_loader(data: bytes) -> list[Command]:
    """The commands of ``etc/table-loader`` (QEMU hw/acpi/bios-linker-loader.c's format)."""
    assert len(data) % 128 == 0
    out = []
    for i in range(0, len(data), 128):
        entry = data[i : i + 128]
        kind, = struct.unpack_from("<I", entry)

        def name(at: int, entry: bytes = entry) -> str:
            raw = entry[at : at + 56]
            assert raw[55] == 0     # NUL-terminated within its 56 bytes
            return raw.split(b"\0")[0].decode()

        if kind == 1:    # ALLOCATE: file, align, zone
            fields: tuple[object, ...] = (name(4), *struct.unpack_from("<IB", entry, 60))
        elif kind == 2:  # ADD_POINTER: dest, src, offset, size
            fields = (name(4), name(60), *struct.unpack_from("<IB", entry, 116))
        elif kind == 3:  # ADD_CHECKSUM: file, result offset, start, length
            fields = (name(4), *struct.unpack_from("<III", entry, 60))
        else:
            raise AssertionError(f"unknown command {kind}")
        out.append(Command(kind, fields))
    return out


class FirmwareMemory:
    """Where a firmware would put the files: HIGH allocations grow down from 128 MiB, FSEG
    ones up from 0xE0000, each aligned as asked."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytearray]] = {}
        self.high, self.fseg = 128 << 20, 0xE0000

    def allocate(self, name: str, data: bytes, align: int, zone: int) -> None:
        assert name not in self.files and align & (align - 1) == 0
        if zone == 1:
            self.high = (self.high - len(data)) & ~(align - 1)
            base = self.high
        else:
            assert zone == 2
            base = (self.fseg + align - 1) & ~(align - 1)
            self.fseg = base + len(data)
            assert self.fseg <= 0x100000
        self.files[name] = (base, bytearray(data))

    def read(self, address: int, length: int) -> bytes:
        for base, data in self.files.values():
            if base <= address and address + length <= base + len(data):
                return bytes(data[address - base : address - base + length])
        raise AssertionError(f"{address:#x}+{length} is in no loaded file")


def run_loader(files: dict[str, bytes]) -> FirmwareMemory:
    """What SeaBIOS's romfile_loader_execute does with the commands."""
    memory = FirmwareMemory()
    for command in read_loader(files[loader.LOADER_FILE]):
        if command.kind == 1:
            name, align, zone = command.fields
            assert isinstance(name, str) and isinstance(align, int) and isinstance(zone, int)
            memory.allocate(name, files[name], align, zone)
        elif command.kind == 2:
            dest, src, offset, size = command.fields
            assert isinstance(dest, str) and isinstance(src, str)
            assert isinstance(offset, int) and isinstance(size, int)
            data = memory.files[dest][1]
            assert size in (1, 2, 4, 8) and offset + size <= len(data)
            value = int.from_bytes(data[offset : offset + size], "little")
            value = (value + memory.files[src][0]) % (1 << (8 * size))
            data[offset : offset + size] = value.to_bytes(size, "little")
        else:
            file, result, start, length = command.fields
            assert isinstance(file, str) and isinstance(result, int)
            assert isinstance(start, int) and isinstance(length, int)
            data = memory.files[file][1]
            assert result < len(data) and start + length <= len(data)
            data[result] = (data[result] - sum(data[start : start + length])) & 0xFF
    return memory


Read = Callable[[int, int], bytes]


def table_at(read: Read, address: int, signature: bytes) -> bytes:
    header = read(address, 36)
    assert header[:4] == signature
    length, = struct.unpack_from("<I", header, 4)
    table = read(address, length)
    assert sum(table) & 0xFF == 0, f"{signature!r} checksum"
    return table


def resolve(read: Read, rsdp_address: int) -> dict[str, bytes]:
    """Follow RSDP -> XSDT (and RSDT) -> FADT -> DSDT, and XSDT -> MADT, as an OS does."""
    assert rsdp_address % 16 == 0 and 0xE0000 <= rsdp_address < 0x100000   # where OSes scan
    rsdp = read(rsdp_address, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    rsdt_address, length, xsdt_address = struct.unpack_from("<IIQ", rsdp, 16)
    assert length == 36
    found = {"RSDP": rsdp, "XSDT": table_at(read, xsdt_address, b"XSDT")}
    xsdt = found["XSDT"]
    entries = [struct.unpack_from("<Q", xsdt, o)[0] for o in range(36, len(xsdt), 8)]
    for address in entries:
        signature = read(address, 4)
        found[signature.decode()] = table_at(read, address, signature)
    if rsdt_address:
        rsdt = found["RSDT"] = table_at(read, rsdt_address, b"RSDT")
        assert [struct.unpack_from("<I", rsdt, o)[0] for o in range(36, len(rsdt), 4)] == entries
    fadt = found["FACP"]
    dsdt32, = struct.unpack_from("<I", fadt, 40)
    x_dsdt, = struct.unpack_from("<Q", fadt, 140)
    assert dsdt32 == x_dsdt != 0
    found["DSDT"] = table_at(read, x_dsdt, b"DSDT")
    return found


def resolve_loaded(memory: FirmwareMemory) -> dict[str, bytes]:
    return resolve(memory.read, memory.files[loader.RSDP_FILE][0])


def test_loader_files_resolve_to_a_chain(tmp_path: Path) -> None:
    files = loader.acpi_files(2, VIRTIO)
    assert set(files) == {"etc/acpi/rsdp", "etc/acpi/tables", "etc/table-loader"}
    commands = read_loader(files[loader.LOADER_FILE])
    kinds = [c.kind for c in commands]
    # Both files allocated before any command names them, the RSDP in FSEG.
    assert commands[0].fields == ("etc/acpi/tables", 64, 1)
    assert Command(1, ("etc/acpi/rsdp", 16, 2)) in commands
    assert kinds.count(1) == 2 and kinds.count(2) == 2 + 2 + 2 + 2 and kinds.count(3) == 7
    # Unpatched, the blob holds blob-relative offsets: the FADT's DSDT pointer is 0.
    blob = files[loader.TABLES_FILE]
    fadt_at = blob.index(b"FACP")
    assert struct.unpack_from("<I", blob, fadt_at + 40) == (0,)

    found = resolve_loaded(run_loader(files))
    assert set(found) == {"RSDP", "XSDT", "RSDT", "FACP", "APIC", "DSDT"}
    for name in ("XSDT", "RSDT", "FACP", "APIC", "DSDT"):
        disassemble(found[name], tmp_path, name.lower())
    text = (tmp_path / "dsdt.dsl").read_text()
    assert text.count('Name (_HID, "LNRO0005")') == 3
    assert "0xFEB00400,         // Address Base" in text and "0x00000012," in text
    assert (tmp_path / "apic.dsl").read_text().count("[Processor Local APIC]") == 2


def test_loader_without_rsdt_and_checksums_from_any_start() -> None:
    files = loader.acpi_files(1, [], rsdt=False, reset=None, com1=False, rtc=False,
                              fw_cfg=False)
    found = resolve_loaded(run_loader(files))
    assert "RSDT" not in found and struct.unpack_from("<I", found["RSDP"], 16) == (0,)
    assert b"LNRO" not in found["DSDT"] and b"PNP" not in found["DSDT"]
    # Checksum bytes are left zero in the files, as QEMU leaves them.
    assert files[loader.RSDP_FILE][8] == files[loader.RSDP_FILE][32] == 0


def test_table_loader_commands_and_bad_input() -> None:
    tl = loader.TableLoader()
    tl.allocate("a", 100, align=8, zone=loader.ZONE_HIGH)
    tl.add_pointer("a", 92, 8, "a")
    tl.add_checksum("a", 9, 0, 100)
    data = tl.encode()
    assert len(data) == 3 * 128
    assert [c.fields for c in read_loader(data)] == [("a", 8, 1), ("a", "a", 92, 8),
                                                     ("a", 9, 0, 100)]
    bad: list[tuple[Callable[[], object], str]] = [
        (lambda: tl.allocate("b", 1, align=3, zone=1), "align"),
        (lambda: tl.allocate("b", 1, align=4, zone=3), "zone"),
        (lambda: tl.allocate("x" * 56, 1, align=4, zone=1), "file"),
        (lambda: tl.add_pointer("a", 93, 8, "a"), "offset"),      # runs past the file
        (lambda: tl.add_pointer("a", 0, 3, "a"), "size"),
        (lambda: tl.add_pointer("a", 0, 8, "nope"), "src"),        # never allocated
        (lambda: tl.add_checksum("a", 100, 0, 1), "offset"),
        (lambda: tl.add_checksum("a", 0, 50, 51), "start"),
    ]
    for call, argument in bad:
        with pytest.raises(XInterfaceError) as info:
            call()
        assert info.value.argument == argument, argument
    assert len(tl.encode()) == 3 * 128      # nothing half-written


# --- SeaBIOS runs the loader ---------------------------------------------------------------------

SEABIOS = Path("/usr/share/seabios/bios-microvm.bin")   # Debian's seabios package (CI has it)
FSEG = range(0xE0000, 0x100000, 16)


@needs_kvm
def test_seabios_links_the_tables_and_finds_the_virtio_mmio_devices(tmp_path: Path) -> None:
    import xinterface as xi
    from xinterface.boards import attach_microvm
    from xinterface.devices import Until

    out = io.BytesIO()
    devices = VIRTIO[:2]
    with xi.Machine(memory=32 << 20, irqchip=True) as m:
        m.load_firmware(SEABIOS)
        watch = Until(out, b"enter handle_19", m.stop)
        platform = attach_microvm(m, debugcon=watch, serial=io.BytesIO(), mmio_devices=devices)
        assert m.run(timeout=120).reason == "stopped"
        # What an OS would find: the RSDP on a 16-byte boundary of the F segment, and the
        # chain it names, as SeaBIOS linked it in guest memory.
        intf = platform.intf
        fseg = intf.copy_from(FSEG.start, FSEG.stop - FSEG.start)
        rsdps = [a for a in FSEG if fseg[a - FSEG.start : a - FSEG.start + 8] == b"RSD PTR "]
        assert len(rsdps) == 1
        found = resolve(intf.copy_from, rsdps[0])
    log = out.getvalue().decode(errors="replace")
    assert platform.fw_cfg.dma_errors == 0
    # SeaBIOS 1.16 at its default debug level: the loader ran (the RSDP it installed names an
    # XSDT that names the FADT), the DSDT came from the FADT's 32-bit pointer, and its parser
    # found each LNRO0005 device's registers and interrupt, then probed them (nothing there).
    fadt_address = int(log.split("table(50434146)=")[1].split(" ")[0], 16)  # 'FACP' as LE u32
    xsdt = found["XSDT"]
    assert fadt_address == struct.unpack_from("<Q", xsdt, 36)[0]   # the FADT is entry 0
    dsdt_address = struct.unpack_from("<I", found["FACP"], 40)[0]
    assert f"ACPI: parse DSDT at {dsdt_address:#010x} (len {len(found['DSDT'])})" in log
    for i, (base, _, gsi) in enumerate(devices):
        assert f"ACPI: virtio-mmio device VR{i:02X} at {base:#x}, irq {gsi}" in log
        assert f"virtio-mmio: {base:x}: magic mismatch" in log
    assert "Found 1 serial ports" in log
    madt = found["APIC"]
    kinds = []
    at = 44
    while at < len(madt):
        kinds.append(madt[at])
        at += madt[at + 1]
    # One vCPU, the IOAPIC, LINT1 NMI; no IRQ 0 override: KVM's default routing keeps the PIT
    # on IOAPIC pin 0 (the board's choice, see platform.acpi_fw_cfg_files).
    assert kinds == [tables.MADT_LOCAL_APIC, tables.MADT_IO_APIC, tables.MADT_LOCAL_APIC_NMI]
    for name in ("XSDT", "RSDT", "FACP", "APIC", "DSDT"):
        disassemble(found[name], tmp_path, name.lower())
    assert (tmp_path / "dsdt.dsl").read_text().count('"LNRO0005"') == 2
