"""The debug ports guests and their authors know from Bochs and QEMU.

- Port 0xe9, the debug console (Bochs "port e9 hack", QEMU ``-device isa-debugcon``): each
  byte written goes to the console; a read returns 0xe9 so a guest can detect it.
- Port 0xf4, debug exit (QEMU ``-device isa-debug-exit,iobase=0xf4``): writing ``v`` ends the
  run with exit status ``(v << 1) | 1``.
"""

from __future__ import annotations

import sys
from typing import Protocol

from ..delivery import Delivery
from ..interface import XInterface, XIOEvent, XIOEventFlags, XIORange, bind
from ..runstate import RunControl
from ..vm import Vm
from .output import Output

DEBUGCON_PORT = 0xE9
DEBUGCON_READBACK = 0xE9
DEBUG_EXIT_PORT = 0xF4


class DebugConsole:
    """Port 0xe9: bytes to ``out`` (default: stdout). A wider write sends each byte, LSB first.

    ``posted=True`` takes 1-byte writes through KVM's coalesced PIO ring (Delivery.POSTED):
    no exit per byte; the bytes reach ``out`` in order, at the guest's next exit.
    """

    def __init__(self, out: Output | None = None, port: int = DEBUGCON_PORT, *,
                 posted: bool = False) -> None:
        self.out = out
        self.port = port
        self.posted = posted
        self._entries: list[XIORange | XIOEvent] = []

    def attach(self, intf: XInterface) -> None:
        self._entries = [intf.iorange(self.port, 1, XIOEventFlags.PIO, read=self._read,
                                      write=self._write, name="debugcon")]
        if self.posted:
            self._entries.append(intf.ioevent(self.port, 1, XIOEventFlags.PIO,
                                              signal=self._posted, delivery=Delivery.POSTED))

    def detach(self) -> None:
        for entry in self._entries:
            entry.deassign()
        self._entries = []

    def _posted(self, ev: XIOEvent, payload: bytes) -> None:
        self._write(0, payload)

    def _write(self, offset: int, data: bytes) -> None:
        out = self.out if self.out is not None else sys.stdout.buffer
        out.write(data)
        # 0x0a, newline: an int test is ten times cheaper than `b"\n" in data` (which goes
        # through the buffer protocol), and this runs once per console byte.
        if 10 in data:
            out.flush()

    def _read(self, offset: int, size: int) -> bytes:
        return bytes([DEBUGCON_READBACK]) * size

    # The port keeps no guest-visible state: a snapshot records that it is there.
    def save(self) -> dict[str, object]:
        return {}

    def load(self, state: dict[str, object]) -> None:
        pass


class DebugExit:
    """Port 0xf4: a write of ``v`` (any width, little-endian) ends the run, status (v<<1)|1."""

    def __init__(self, port: int = DEBUG_EXIT_PORT) -> None:
        self.port = port
        self._range: XIORange | None = None
        self._control: RunControl | None = None

    def attach(self, intf: XInterface) -> None:
        self._control = intf.vm.run_control
        self._range = intf.iorange(self.port, 1, XIOEventFlags.PIO, write=self._write,
                                   name="debug-exit")

    def detach(self) -> None:
        if self._range is not None:
            self._range.deassign()
            self._range = None

    def save(self) -> dict[str, object]:
        return {}

    def load(self, state: dict[str, object]) -> None:
        pass

    def _write(self, offset: int, data: bytes) -> None:
        assert self._control is not None
        self._control.exit((int.from_bytes(data, "little") << 1) | 1)


class WithConsole(Protocol):
    """A machine as the debug ports see it: the VM to bind to, and where the console goes."""

    @property
    def vm(self) -> Vm: ...
    @property
    def console(self) -> Output | None: ...


def attach_debug_ports(machine: WithConsole) -> XInterface:
    """Both ports on ``machine``, through one xinterface the machine's close() tears down."""
    intf = bind(machine.vm)
    DebugConsole(machine.console).attach(intf)
    DebugExit().attach(intf)
    return intf
