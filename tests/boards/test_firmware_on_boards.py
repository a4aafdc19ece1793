"""The boards' virtio devices with unmodified firmware: Debian's SeaBIOS boots a disk over
virtio-mmio on microvm (found through the DSDT), sees rng/console/net functions on pc, and
runs Debian's iPXE from our virtio-net's expansion ROM BAR, which gets an address by DHCP and
a script by TFTP through our virtio-net."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from tests.netns import inside, needs_netns, netns, tap
from tests.virtio.grub_disk import MARKER, grub_disk
from xinterface.boards import attach_microvm, attach_pc
from xinterface.boards.microvm import VIRTIO_MMIO_SLOTS, virtio_mmio_slot
from xinterface.boards.virtio import IPXE_VIRTIO_ROM, Disk, Net
from xinterface.devices import Until
from xinterface.devices.pci.rom import rom_for, rom_ids
from xinterface.errors import XInterfaceError
from xinterface.frontend.devices import parse_net
from xinterface.virtio.blk import VirtioBlk
from xinterface.virtio.mmio import VirtioMmio
from xinterface.virtio.pci import VirtioPci

pytestmark = needs_kvm
MICROVM_BIOS = Path("/usr/share/seabios/bios-microvm.bin")
PC_BIOS = Path("/usr/share/seabios/bios.bin")
SECTORS = 8


def boot_disk(path: Path, guest: Assemble) -> int:
    """tests/guests/disk_boot.S and SECTORS sectors after it; the sum it will print."""
    data = bytes((i * 7 + i // 512) & 0xFF for i in range(SECTORS * 512))
    path.write_bytes((guest("disk_boot", gpa=0x7C00, SECTORS=SECTORS) + data).ljust(2 << 20,
                                                                                    b"\0"))
    return int(sum(struct.unpack(f"<{len(data) // 2}H", data))) & 0xFFFF


@pytest.mark.parametrize("doorbells", [xi.Delivery.SYNC, xi.Delivery.EVENTFD],
                         ids=lambda d: d.value)
def test_microvm_boots_a_disk_over_virtio_mmio(tmp_path: Path, guest: Assemble,
                                               doorbells: xi.Delivery) -> None:
    image = tmp_path / "disk.img"
    expected = boot_disk(image, guest)
    console, log = io.BytesIO(), io.BytesIO()
    with xi.Machine(memory=32 << 20, irqchip=True, console=console) as m:
        m.load_firmware(MICROVM_BIOS)
        platform = attach_microvm(m, debugcon=log, serial=io.BytesIO(), disks=[Disk(str(image))],
                                  rng=True, doorbells=doorbells)
        result = m.run(timeout=120)
        text = log.getvalue().decode(errors="replace")
        assert (result.reason, result.exit_code) == ("exit", 0x21), text[-3000:]
        assert console.getvalue() == f"sum={expected:04x}\n".encode()
        # Found through the DSDT at QEMU's layout, with its level-triggered GSI; the rng
        # behind the second transport.
        assert "ACPI: virtio-mmio device VR00 at 0xfeb00000, irq 16" in text
        assert "ACPI: virtio-mmio device VR01 at 0xfeb00200, irq 17" in text
        assert "found virtio-blk-mmio at 0xfeb00000" in text
        transports = [t for t in platform.virtio if isinstance(t, VirtioMmio)]
        assert [t.base for t in transports] == [0xFEB00000, 0xFEB00200]
        disk = transports[0].device
        assert isinstance(disk, VirtioBlk)
        fd = disk.fileno()
    with pytest.raises(OSError):
        os.fstat(fd)                              # the image was closed with the machine


def test_cli_boots_the_same_disk_on_both_boards(tmp_path: Path, guest: Assemble) -> None:
    image = tmp_path / "disk.img"
    expected = boot_disk(image, guest)
    for bios, board in ((MICROVM_BIOS, "microvm"), (PC_BIOS, "pc")):
        done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios", str(bios),
                               "--board", board, "--disk", f"{image},readonly", "--rng",
                               "--serial", "", "--debugcon", os.devnull],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.stdout == f"sum={expected:04x}\n", (board, done.stderr)


def test_cli_boots_the_pc_boards_grub_disk_on_microvm(tmp_path: Path) -> None:
    """The GRUB image of tests/virtio/grub_disk.py (which the pc board boots over
    virtio-pci), now over virtio-mmio: SeaBIOS for microvm, then GRUB's own biosdisk."""
    disk = grub_disk(tmp_path)
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios",
                           str(MICROVM_BIOS), "--disk", f"{disk},readonly", "--debugcon",
                           os.devnull, "--until", MARKER, "--timeout", "120"],
                          capture_output=True, text=True, errors="replace", timeout=180,
                          check=False)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr)
    assert MARKER in done.stdout


def test_cli_virtio_console_writes_where_serial_goes(tmp_path: Path, guest: Assemble) -> None:
    """A boot sector that prints through a virtio-console (tests/guests/virtio_console.S),
    on a disk; the console sits behind the second virtio-mmio transport."""
    image = tmp_path / "disk.img"
    image.write_bytes(guest("virtio_console", gpa=0x7C00).ljust(2 << 20, b"\0"))
    serial = tmp_path / "serial.out"
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios",
                           str(MICROVM_BIOS), "--disk", str(image), "--virtio-console",
                           "--serial", str(serial), "--debugcon", "none"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert serial.read_bytes().endswith(b"hello from hvc0\n"), (done.stdout, done.stderr)


def test_pc_board_puts_each_virtio_device_in_a_slot(tmp_path: Path, guest: Assemble) -> None:
    image = tmp_path / "disk.img"
    boot_disk(image, guest)
    log = io.BytesIO()
    with xi.Machine(memory=32 << 20, irqchip=True, console=io.BytesIO()) as m:
        m.load_firmware(PC_BIOS)
        platform = attach_pc(m, debugcon=log, serial=io.BytesIO(), disks=[Disk(str(image))],
                             rng=True, virtio_console=True)
        result = m.run(timeout=120)
    text = log.getvalue().decode(errors="replace")
    assert (result.reason, result.exit_code) == ("exit", 0x21), text[-3000:]
    for slot, device in ((3, 0x1001), (4, 0x1005), (5, 0x1003)):   # blk, rng, console
        assert f"PCI: init bdf=00:{slot:02x}.0 id=1af4:{device:04x}" in text
    assert platform.console is not None and platform.console.device_id == 3


def test_microvm_virtio_mmio_interrupt_is_level_triggered(guest: Assemble) -> None:
    base, gsi = virtio_mmio_slot(0)
    image = guest("level_irq", mode="protected", BASE=base, GSI=gsi)
    with xi.Machine(memory=2 << 20, irqchip=True, console=io.BytesIO()) as m:
        m.load_flat(image, gpa=0x1000, mode="protected")
        platform = attach_microvm(m, rng=True)
        result = m.run(timeout=30)
        transport = platform.virtio[0]
    assert isinstance(transport, VirtioMmio)
    # The device interrupted once. The first handler left InterruptStatus set, so the line
    # came back after its EOI (an edge would not have: one interrupt, and a guest that waits
    # forever); the second acknowledged it and the line went down. A third may come: KVM
    # raises a resampling irqfd's line from a worker, so a re-raise decided at one EOI can
    # land after the next (the guest then finds InterruptStatus 0: a spurious interrupt,
    # which drivers ignore, as QEMU's level lines can give too). Never more.
    assert result.reason == "exit" and result.exit_code in ((2 << 1) | 1, (3 << 1) | 1)
    assert transport.stats["interrupts"] == 1 and transport.interrupt_status == 0


def test_microvm_has_eight_virtio_mmio_slots(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    assert [virtio_mmio_slot(i) for i in (0, 7)] == [(0xFEB00000, 16), (0xFEB00E00, 23)]
    with xi.Machine(memory=8 << 20, irqchip=True) as m, pytest.raises(XInterfaceError) as info:
        attach_microvm(m, disks=[Disk(str(image))] * (VIRTIO_MMIO_SLOTS + 1))
    assert info.value.errno == 28   # ENOSPC


@pytest.mark.parametrize(("spec", "parsed"), [
    ("tap=tap0", Net("tap0")),
    ("tap=tap1,mac=52:54:00:00:00:01", Net("tap1", "52:54:00:00:00:01")),
    ("tap=t,rom=ipxe", Net("t", rom=IPXE_VIRTIO_ROM)),
])
def test_net_option(spec: str, parsed: Net) -> None:
    assert parse_net(spec) == parsed


@pytest.mark.parametrize("spec", ["tap0", "tap=", "tap=a,mac=01:00:00:00:00:00", "mac=x",
                                  "tap=a,tap=b", "tap=a,vhost=on"])
def test_bad_net_option(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_net(spec)


def test_rom_header_ids_follow_the_function() -> None:
    rom = Path(IPXE_VIRTIO_ROM).read_bytes()
    size = rom[2] * 512
    assert sum(rom[:size]) & 0xFF == 0
    assert rom_ids(rom) == (0x1AF4, 0x1041)        # Debian's iPXE names modern virtio-net
    patched = rom_for(rom, 0x1AF4, 0x1000)
    assert rom_ids(patched) == (0x1AF4, 0x1000)
    assert sum(patched[:size]) & 0xFF == 0          # the checksum still holds
    assert len(patched) == len(rom)
    assert sum(a != b for a, b in zip(rom, patched, strict=True)) == 2   # the ID, the checksum
    assert rom_for(patched, 0x1AF4, 0x1000) is patched
    with pytest.raises(XInterfaceError):
        rom_for(b"\x00" * 64, 1, 2)


@needs_netns
def test_ipxe_from_our_rom_bar_gets_an_address_and_a_script(tmp_path: Path) -> None:
    """SeaBIOS runs Debian's iPXE from our virtio-net's ROM BAR; iPXE's own virtio-net driver
    asks dnsmasq (in the test's namespace, on the TAP's peer address) for an address by DHCP,
    fetches a script by TFTP and runs it."""
    (tmp_path / "boot.ipxe").write_text("#!ipxe\necho xinterface: fetched by TFTP from "
                                        "${next-server}\n")
    serial, log = io.BytesIO(), io.BytesIO()
    dnsmasq_log = tmp_path / "dnsmasq.log"
    with netns() as ns, dnsmasq_log.open("w") as said_to:
        tap(ns, "tap0", "10.0.2.2/24")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
             "--user=root", "--port=0", "--interface=tap0", "--bind-interfaces",
             "--dhcp-range=10.0.2.15,10.0.2.20,1h", "--leasefile-ro", "--log-dhcp",
             "--pid-file=", "--enable-tftp", f"--tftp-root={tmp_path}",
             "--dhcp-boot=boot.ipxe"],
            stdout=subprocess.DEVNULL, stderr=said_to)
        try:
            with xi.Machine(memory=64 << 20, irqchip=True) as m:
                m.load_firmware(PC_BIOS)
                watch = Until(serial, b"fetched by TFTP from 10.0.2.2", m.stop)
                with inside(ns):
                    platform = attach_pc(m, debugcon=log, serial=watch,
                                         nets=[Net("tap0", rom="ipxe")], sercon=True)
                m.run(timeout=300)
                transport = platform.virtio[0]
                assert isinstance(transport, VirtioPci) and transport.function.rom is not None
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(30)
    said = dnsmasq_log.read_text()
    text = log.getvalue().decode(errors="replace")
    out = serial.getvalue().decode(errors="replace")
    assert watch.matched, out[-2000:]
    assert "PCI: init bdf=00:03.0 id=1af4:1000" in text
    assert "Running option rom at c000:0003" in text     # found behind our ROM BAR, run
    assert "iPXE (http://ipxe.org) 00:03.0" in out        # its init names our function
    assert "net0: 52:54:00:12:34:56 using virtio-net on 0000:00:03.0" in out
    # The address iPXE reports is the one dnsmasq acknowledged to our MAC.
    acked = [line.split()[-2] for line in said.splitlines()
             if "DHCPACK(tap0)" in line and "52:54:00:12:34:56" in line]
    assert acked and f"net0: {acked[-1]}/255.255.255.0 gw 10.0.2.2" in out, said[-2000:]
    assert f"sent {tmp_path / 'boot.ipxe'} to {acked[-1]}" in said

