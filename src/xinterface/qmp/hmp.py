"""The human monitor: QEMU's text commands, for ``human-monitor-command`` and for the serial
console's ``Ctrl-A c``. Each command line gives the text QEMU's monitor would print."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from .controls import Controls

_FLAGS = ((0, "C"), (2, "P"), (4, "A"), (6, "Z"), (7, "S"), (11, "O"))
_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")


def info_registers(controls: Controls) -> str:
    """Every vCPU's general registers, segments and control registers, as QEMU's layout."""
    lines = []
    with controls.held():
        for loop in controls.machine.vcpus:
            regs, sregs = controls.registers(loop.index)
            flags = "".join(name if regs.rflags >> bit & 1 else "-"
                            for bit, name in reversed(_FLAGS))
            lines.append(f"CPU#{loop.index}")
            names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
            for row in range(0, len(names), 4):
                lines.append(" ".join(f"{n.upper():<3}={getattr(regs, n):016x}"
                                      for n in names[row:row + 4]))
            lines.append(f"RIP={regs.rip:016x} RFL={regs.rflags:08x} [{flags}]")
            for name in _SEGMENTS:
                seg = getattr(sregs, name)
                lines.append(f"{name.upper()} ={seg.selector:04x} {seg.base:016x} "
                             f"{seg.limit:08x}")
            lines.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} "
                         f"CR4={sregs.cr4:08x}")
            lines.append(f"EFER={sregs.efer:016x}")
    return "\r\n".join(lines) + "\r\n"


def info_pci(controls: Controls) -> str:
    """Each function of the board's PCI bus: ids, class, interrupt and BARs, as QEMU's."""
    pci = controls.platform.pci if controls.platform is not None else None
    if pci is None:
        return "this machine has no PCI bus\r\n"
    lines = []
    for (bus, slot, function), fn in sorted(pci.functions.items()):
        config = bytes(fn.read(0, 64))
        vendor = int.from_bytes(config[0:2], "little")
        device = int.from_bytes(config[2:4], "little")
        class_code = int.from_bytes(config[10:12], "little")
        lines.append(f"  Bus {bus:2d}, device {slot:3d}, function {function}:")
        lines.append(f"    Class {class_code:04x}: PCI device {vendor:04x}:{device:04x}")
        if config[0x3D]:
            lines.append(f"      IRQ {config[0x3C]}, pin {chr(ord('A') + config[0x3D] - 1)}")
        for index, bar in sorted(fn.bars.items()):
            kind = "I/O" if bar.io else ("64 bit memory" if bar.mem64 else "32 bit memory")
            where = (f"at {bar.mapped:#x} [{bar.mapped + bar.size - 1:#x}]"
                     if bar.mapped is not None else "not mapped")
            lines.append(f"      BAR{index}: {kind} {where}.")
    return "\r\n".join(lines) + "\r\n"


def info_xioevents(controls: Controls) -> str:
    """What the VM's clients registered on each bus: every exact-match xioevent (address,
    length, how it is delivered) and every range (base, size, its device's name)."""
    lines = []
    machine = controls.machine
    for name, bus in (("pio", machine.pio_bus), ("mmio", machine.mmio_bus)):
        for entry in sorted(list(bus.events.values()), key=lambda e: e.addr):
            delivery = getattr(entry, "delivery", None)
            how = str(getattr(delivery, "value", "sync"))
            lines.append(f"{name:<4} {entry.addr:#010x} len {entry.length} event {how}")
        for device in bus.routes.devices:
            lines.append(f"{name:<4} {device.base:#010x} len {device.size} range "
                         f"{device.name or '-'}")
    return ("\r\n".join(lines) or "no xioevents") + "\r\n"


def _status(controls: Controls) -> str:
    return f"VM status: {controls.status()}\r\n"


def _simple(action: Callable[[Controls], None]) -> Callable[[Controls], str]:
    def run(controls: Controls) -> str:
        action(controls)
        return ""
    return run


INFO: dict[str, Callable[[Controls], str]] = {
    "registers": info_registers, "pci": info_pci, "xioevents": info_xioevents,
    "status": _status,
}
COMMANDS: dict[str, Callable[[Controls], str]] = {
    "stop": _simple(Controls.stop), "cont": _simple(Controls.cont), "c": _simple(Controls.cont),
    "system_reset": _simple(Controls.system_reset), "quit": _simple(Controls.quit),
    "q": _simple(Controls.quit),
}


def execute(controls: Controls, line: str) -> str:
    """Run one command line; what the monitor prints (an unknown command says so)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"{exc}\r\n"
    if not words:
        return ""
    if words[0] == "help" or words[0] == "?":
        return ("".join(f"{name}\r\n" for name in sorted(COMMANDS))
                + "".join(f"info {name}\r\n" for name in sorted(INFO)))
    if words[0] in ("info", "i"):
        if len(words) != 2 or words[1] not in INFO:
            return f"info: one of {', '.join(sorted(INFO))}\r\n"
        return INFO[words[1]](controls)
    command = COMMANDS.get(words[0])
    if command is None or len(words) != 1:
        return f"unknown command: '{line.strip()}'\r\n"
    return command(controls)
