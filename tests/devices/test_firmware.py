"""Firmware boot and the platform devices, on real KVM: Debian's SeaBIOS, and our own guests
talking to fw_cfg (good and bad DMA descriptors), COM1, the CMOS and a ROM."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import xinterface as xi
from tests.conftest import Assemble, needs_kvm
from xinterface.boards import attach_microvm
from xinterface.devices import Until, fw_cfg
from xinterface.devices.cmos import Cmos, memory_registers
from xinterface.devices.debug import DebugConsole
from xinterface.devices.uart import Uart16550

pytestmark = needs_kvm

# .ci/run installs Debian's seabios package: this file must exist on CI.
SEABIOS = Path("/usr/share/seabios/bios-microvm.bin")


def boot_seabios(memory: int, posted: bool = False) -> tuple[xi.RunResult, str, fw_cfg.FwCfg]:
    out = io.BytesIO()
    with xi.Machine(memory=memory, irqchip=True) as m:
        m.load_firmware(SEABIOS)
        watch = Until(out, b"enter handle_19", m.stop)
        platform = attach_microvm(m, debugcon=watch, serial=io.BytesIO(),
                                  posted_debugcon=posted)
        result = m.run(timeout=120)
        assert watch.matched, out.getvalue().decode(errors="replace")[-2000:]
        return result, out.getvalue().decode(errors="replace"), platform.fw_cfg


@pytest.mark.parametrize("memory", [32 << 20, 1 << 30])
def test_seabios_reaches_its_boot_attempt(memory: int) -> None:
    result, log, fw = boot_seabios(memory)
    assert result.reason == "stopped"  # by the watcher, on "enter handle_19"
    assert "Found QEMU fw_cfg" in log
    assert "QEMU fw_cfg DMA interface supported" in log
    assert f"qemu/e820: addr 0x0000000000000000 len 0x{memory:016x} [RAM]" in log
    assert "Found 1 serial ports" in log  # our 16550A passed SeaBIOS's probe
    assert log.index("Found QEMU fw_cfg") < log.index("enter handle_19")
    assert fw.dma_errors == 0


def test_posted_debug_console_keeps_the_output_and_saves_the_exits() -> None:
    sync_result, sync_log, _ = boot_seabios(32 << 20)
    posted_result, posted_log, _ = boot_seabios(32 << 20, posted=True)
    end = sync_log.index("enter handle_19")
    # Byte for byte the same output, in the same order (POSTED may have run a little further
    # before the stop took effect).
    assert posted_log[:end] == sync_log[:end]
    # One exit per byte of output with SYNC; with POSTED only ring-full and other exits.
    assert sync_result.exits["io"] - posted_result.exits["io"] > end // 2


def test_seabios_pc_build_on_the_i440fx_board() -> None:
    # The stretch: SeaBIOS's bios.bin for QEMU's pc machine finds the PCI host bridge and the
    # PIIX3 through configuration mechanism #1, and still reaches its boot attempt.
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios",
                           str(SEABIOS.with_name("bios.bin")), "--board", "pc", "--memory", "32M",
                           "--until", "enter handle_19", "--debugcon", "-",
                           "--serial", "none"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "Found 2 PCI devices" in done.stdout
    assert "PCI: init bdf=00:00.0 id=8086:1237" in done.stdout
    assert "PCI: init bdf=00:01.0 id=8086:7000" in done.stdout
    assert done.stdout.rstrip().endswith("enter handle_19")


def test_pci_config_space_reads_all_ones_where_nothing_is() -> None:
    from xinterface.devices.pci import PciHost

    host = PciHost()
    host._write_address(0, (0x80000000 | (1 << 11)).to_bytes(4, "little"))
    assert host._read_data(0, 4) == b"\x86\x80\x00\x70"          # 8086:7000
    host._write_address(0, (0x80000000 | (5 << 11)).to_bytes(4, "little"))
    assert host._read_data(0, 4) == b"\xff" * 4                  # empty slot
    host._write_address(0, (1 << 11).to_bytes(4, "little"))      # enable bit clear
    assert host._read_data(2, 2) == b"\xff" * 2
    host._write_address(0, 0x80000000.to_bytes(4, "little"))
    host._write_data(0, b"\0\0\0\0")                             # the ID is read-only
    assert host._read_data(0, 2) == b"\x86\x80"
    assert host._write_address(1, b"\x06") is False                # byte access: not ours


def test_boot_command_until() -> None:
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios", str(SEABIOS),
                           "--memory", "32M", "--until", "enter handle_19", "--debugcon", "-",
                           "--serial", "none"],
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert b"SeaBIOS (version" in done.stdout
    assert done.stdout.rstrip().endswith(b"enter handle_19")


def test_boot_command_timeout_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "xinterface", "boot", "--bios", str(SEABIOS),
                           "--memory", "32M", "--until", "never printed", "--timeout", "1",
                           "--debugcon", str(tmp_path / "dc.txt")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 124
    assert done.stderr.startswith("xinterface: the firmware was still running after 1 s")
    assert done.stderr.count("\n") == 1
    assert (tmp_path / "dc.txt").read_bytes().startswith(b"SeaBIOS")


def test_bad_firmware_size(tmp_path: Path) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\0" * 5000)
    with xi.Machine(memory=1 << 20) as m, pytest.raises(xi.XInterfaceError) as info:
        m.load_firmware(image)
    assert info.value.argument == "firmware"


# --- fw_cfg DMA from a guest of our own ---------------------------------------------------------

TABLE, REPORT, BUF = 0x8000, 0x5F0, 0x9000
ERROR_BIT_LE = fw_cfg.DMA_CTL_ERROR << 24  # the big-endian control word read as LE


def descriptor(control: int, length: int, address: int) -> bytes:
    return struct.pack(">IIQ", control, length, address)


def test_fw_cfg_dma_good_and_bad_descriptors(guest: Assemble) -> None:
    select_read = (fw_cfg.FW_CFG_SIGNATURE << 16) | fw_cfg.DMA_CTL_SELECT | fw_cfg.DMA_CTL_READ
    cases = [
        (0xA000, descriptor(select_read, 4, BUF), 0),                       # the signature
        (0xA020, descriptor(select_read, 4, 0xD0000000), ERROR_BIT_LE),     # target not RAM
        (0xA040, descriptor(select_read, 0xFFFFFFFF, 0x180000), ERROR_BIT_LE),  # huge length
        (0xA060, descriptor(select_read | 0x100, 4, BUF + 8), ERROR_BIT_LE),    # unknown bit
        (0xA080, descriptor(fw_cfg.DMA_CTL_WRITE, 4, BUF), ERROR_BIT_LE),       # write: no
        (0xA0A0, descriptor(fw_cfg.DMA_CTL_ERROR, 4, BUF), ERROR_BIT_LE),       # error set
        (0xD0000000, b"", 0xFFFFFFFF),  # the descriptor itself is not in RAM: nothing to do
        (0xA0C0, descriptor((fw_cfg.FW_CFG_ID << 16) | fw_cfg.DMA_CTL_SELECT
                            | fw_cfg.DMA_CTL_SKIP, 0, 0), 0),                  # select+skip
    ]
    out = io.BytesIO()
    with xi.Machine(memory=2 << 20, console=out) as m:
        m.load_flat(guest("fw_cfg_dma", TABLE=TABLE, REPORT=REPORT), mode="protected")
        intf = xi.bind(m)
        device = fw_cfg.FwCfg()
        device.attach(intf)
        table = b"".join(struct.pack("<I", addr) for addr, _, _ in cases)
        intf.copy_to(TABLE, table + struct.pack("<I", 0xFFFFFFFF))
        for addr, desc, _ in cases:
            if desc:
                intf.copy_to(addr, desc)
        reports: list[int] = []
        intf.ioevent(REPORT, 4, xi.XIOEventFlags.PIO,
                     signal=lambda ev, p: reports.append(int.from_bytes(p, "little")))
        result = m.run(timeout=60)
        assert result.reason == "hlt"  # the VMM went on through every bad descriptor
        assert reports == [expected for _, _, expected in cases]
        assert intf.copy_from(BUF, 4) == b"QEMU"
        assert intf.copy_from(0x1FF000, 16) == bytes(16)  # the huge read zero-filled RAM
        assert device.dma_errors == 6
        assert device.selector == fw_cfg.FW_CFG_SIGNATURE  # the traditional read selected 0
    assert out.getvalue() == b"QEMU"


def test_fw_cfg_file_directory() -> None:
    device = fw_cfg.FwCfg()
    device.add_file("etc/e820", fw_cfg.e820_table([(0, 1 << 20, fw_cfg.E820_RAM)]))
    device.add_file("etc/boot-fail-wait", b"\0\0\0\0")
    directory = device.items[fw_cfg.FW_CFG_FILE_DIR]
    assert struct.unpack(">I", directory[:4]) == (2,)
    size, key, _, name = struct.unpack(">IHH56s", directory[4:68])
    assert (size, key, name.rstrip(b"\0")) == (20, fw_cfg.FW_CFG_FILE_FIRST, b"etc/e820")
    with pytest.raises(ValueError):
        device.add_file("x" * 56, b"")


# --- COM1, CMOS, ROM ------------------------------------------------------------------------------


def test_uart_transmits_and_receives(guest: Assemble) -> None:
    serial, console = io.BytesIO(), io.BytesIO()
    with xi.Machine(memory=1 << 20, console=console) as m:
        m.load_flat(guest("uart_echo", COUNT=3), mode="protected")
        uart = Uart16550(serial)
        uart.attach(xi.bind(m))

        def typist() -> None:
            deadline = time.monotonic() + 30
            while b"R" not in console.getvalue() and time.monotonic() < deadline:
                time.sleep(0.001)
            uart.feed(b"abc")

        worker = threading.Thread(target=typist)
        worker.start()
        result = m.run(timeout=60)
        worker.join()
    assert result.reason == "hlt"
    assert serial.getvalue() == b"hi\n"
    assert console.getvalue() == b"Rbcd"


def test_cmos_reports_time_and_memory(guest: Assemble) -> None:
    console = io.BytesIO()
    with xi.Machine(memory=1 << 20, console=console) as m:
        m.load_flat(guest("cmos_read"), mode="protected")
        Cmos(memory_registers(64 << 20, 0)).attach(xi.bind(m))
        assert m.run(timeout=30).reason == "hlt"
    status_d, status_b, seconds, ext_lo, ext_hi = console.getvalue()
    assert status_d == 0x80 and status_b == 0x02
    assert seconds >> 4 < 6 and seconds & 0xF < 10  # BCD seconds
    assert ext_lo | ext_hi << 8 == (63 << 20) >> 10  # KiB above 1 MiB


def test_rom_writes_are_dropped(guest: Assemble) -> None:
    firmware = bytes(range(256)) * 256  # 64 KiB, mapped at 4 GiB - 64 KiB
    console = io.BytesIO()
    with xi.Machine(memory=2 << 20, console=console) as m:
        m.load_firmware(firmware)
        m.load_flat(guest("rom_write", ADDR=0xFFFF0010), mode="protected")
        result = m.run(timeout=30)
    assert result.reason == "hlt"
    assert result.exits["mmio"] == 1       # the write exited and was dropped
    assert console.getvalue() == bytes([0x10, 0x11, 0x12, 0x13])


def test_firmware_alias_below_1mib_shares_the_image() -> None:
    firmware = bytes(range(256)) * 512  # 128 KiB
    with xi.Machine(memory=2 << 20) as m:
        m.load_firmware(firmware)
        intf = xi.bind(m)
        assert intf.copy_from(0xE0000, 16) == firmware[:16]
        assert intf.copy_from(0xFFFF0, 16) == firmware[-16:]
        intf.copy_to(0xE0000, b"seen")
        assert intf.copy_from((1 << 32) - len(firmware), 4) == b"seen"  # one memory, two views
        assert intf.copy_from(0xDFFF0, 16) == bytes(16)  # RAM below the alias is still RAM


def test_until_matches_across_writes() -> None:
    hits: list[int] = []
    sink = io.BytesIO()
    watch = Until(sink, b"handle_19", lambda: hits.append(1))
    for chunk in (b"enter han", b"dle", b"_19:\n", b"handle_19"):
        watch.write(chunk)
    assert hits == [1] and watch.matched
    assert sink.getvalue() == b"enter handle_19:\nhandle_19"


def test_debug_console_on_another_port(guest: Assemble) -> None:
    out = io.BytesIO()
    with xi.Machine(memory=1 << 20, debug_ports=False) as m:
        m.load_flat(guest("hello", MODE=16), mode="real")
        DebugConsole(out, port=0xE9).attach(xi.bind(m))
        assert m.run(timeout=10).reason == "hlt"
    assert out.getvalue() == b"hi1"


def test_platform_leaks_no_fd_and_no_thread() -> None:
    import os

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with xi.Machine(memory=2 << 20, irqchip=True) as m:  # warm-up: lazily created state
        attach_microvm(m, debugcon=io.BytesIO(), serial=io.BytesIO())
    before, threads = fds(), threading.active_count()
    for _ in range(20):
        with xi.Machine(memory=2 << 20, irqchip=True) as m:
            m.load_firmware(SEABIOS)
            attach_microvm(m, debugcon=io.BytesIO(), serial=io.BytesIO(), posted_debugcon=True)
    assert fds() == before
    assert threading.active_count() == threads
