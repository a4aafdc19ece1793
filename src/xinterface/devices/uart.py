"""A 16550A UART (COM1: ports 0x3f8-0x3ff, IRQ 4): transmit to a stream, receive from the host.

Register map and bits: the TI/National PC16550D datasheet, "Register Descriptions" (Table 2).
Transmission is instant (THR is always empty again at once); received bytes queue in a FIFO
without limit. Interrupts (received data, THR empty) go out on the line the board hands
(:class:`~.interrupt.InterruptLine`; none when the machine has no in-kernel irqchip), gated by
MCR.OUT2 as on the PC: its level follows the interrupt condition, and the 8259 being
edge-triggered, the line gets one edge when the condition becomes active.
"""

from __future__ import annotations

import errno
import sys
import threading
from collections import deque

from ..errors import XInterfaceError
from ..interface import XInterface, XIOEventFlags, XIORange
from .interrupt import InterruptLine
from .output import Output
from .persist import State, field_int

COM1_BASE = 0x3F8
# Received bytes a restored UART takes from a snapshot: its FIFO has no limit of its own, a
# file's claim is bounded.
RX_LIMIT = 1 << 16
COM1_IRQ = 4

# Register offsets (DLAB=0 unless noted).
RBR_THR = 0      # receive buffer (read) / transmit holding (write); DLL with DLAB
IER = 1          # interrupt enable; DLM with DLAB
IIR_FCR = 2      # interrupt identification (read) / FIFO control (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01        # received data available
IER_THRI = 0x02       # transmitter holding register empty
IIR_NONE = 0x01
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_FIFO_ENABLED = 0xC0
FCR_ENABLE_FIFO = 0x01
LCR_DLAB = 0x80
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_IDLE = 0xB0       # DCD, DSR, CTS asserted: a terminal is attached


class Uart16550:
    """COM port model; :meth:`feed` gives it bytes to receive (from any thread). ``irq``:
    its interrupt line (COM1's is ISA IRQ :data:`COM1_IRQ`), e.g.
    ``irqfd_line(intf, COM1_IRQ)``; the line is the caller's to close."""

    def __init__(self, out: Output | None = None, base: int = COM1_BASE,
                 irq: InterruptLine | None = None) -> None:
        self.out = out
        self.base = base
        self.irq = irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.dll, self.dlm = 0x0C, 0x00  # 9600 baud
        self._thre_pending = False
        self._line = False
        self.tx_bytes = self.rx_bytes = 0  # what crossed the line, for --metrics
        self._range: XIORange | None = None

    def attach(self, intf: XInterface) -> None:
        self._range = intf.iorange(self.base, 8, XIOEventFlags.PIO, read=self._read,
                                   write=self._write, name="uart16550a")

    def detach(self) -> None:
        if self._range is not None:
            self._range.deassign()
        self._range = None

    # --- snapshot (devices/persist.py) -------------------------------------------------------
    _REGISTERS = ("ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm")

    def save(self) -> State:
        """The registers, the bytes received and not yet read, the pending THRE interrupt."""
        with self._lock:
            state: State = {name: getattr(self, name) for name in self._REGISTERS}
            state["rx"] = bytes(self._rx).hex()
            state["thre_pending"] = self._thre_pending
            return state

    def load(self, state: State) -> None:
        """Registers from ``state`` (each a byte, IER's and MCR's within their writable bits);
        then the interrupt line is set as they imply."""
        limits = {"ier": 0x0F, "mcr": 0x1F}
        values = {name: field_int(state, name, 0, limits.get(name, 0xFF))
                  for name in self._REGISTERS}
        rx, pending = state.get("rx"), state.get("thre_pending")
        try:
            received = bytes.fromhex(rx) if isinstance(rx, str) else None
        except ValueError:
            received = None
        if received is None or len(received) > RX_LIMIT or not isinstance(pending, bool):
            raise XInterfaceError(errno.EINVAL, "saved UART state: rx must be hex of at most "
                                  f"{RX_LIMIT} bytes and thre_pending a bool", argument="rx",
                                  value=rx)
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)
            self._rx = deque(received)
            self._thre_pending = pending
            self._update_irq()

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the line, in order."""
        with self._lock:
            self._rx.extend(data)
            self.rx_bytes += len(data)
            self._update_irq()

    # --- registers ------------------------------------------------------------------------------
    def _iir(self) -> int:
        fifo = IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE_FIFO else 0
        if self.ier & IER_RDI and self._rx:
            return IIR_RDI | fifo
        if self.ier & IER_THRI and self._thre_pending:
            return IIR_THRI | fifo
        return IIR_NONE | fifo

    def _update_irq(self) -> None:
        active = not self._iir() & IIR_NONE and bool(self.mcr & MCR_OUT2)
        if active != self._line and self.irq is not None:
            self.irq.set_level(active)
            if active:
                self.irq.trigger()
        self._line = active

    def _write(self, offset: int, data: bytes) -> None:
        value = data[0]
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == RBR_THR and dlab:
                self.dll = value
            elif offset == RBR_THR:
                if self.mcr & MCR_LOOP:
                    self._rx.append(value)
                else:
                    out = self.out if self.out is not None else sys.stdout.buffer
                    out.write(bytes([value]))
                    self.tx_bytes += 1
                    if value == 0x0A:
                        out.flush()
                self._thre_pending = True  # sent at once: the holding register is empty
            elif offset == IER and dlab:
                self.dlm = value
            elif offset == IER:
                self.ier = value & 0x0F
                self._thre_pending = bool(value & IER_THRI)
            elif offset == IIR_FCR:
                self.fcr = value
                if value & 0x02:  # clear the receive FIFO
                    self._rx.clear()
            elif offset == LCR:
                self.lcr = value
            elif offset == MCR:
                self.mcr = value & 0x1F
            elif offset == SCR:
                self.scr = value
            self._update_irq()

    def _read(self, offset: int, size: int) -> bytes:
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == RBR_THR and dlab:
                value = self.dll
            elif offset == RBR_THR:
                value = self._rx.popleft() if self._rx else 0
            elif offset == IER:
                value = self.dlm if dlab else self.ier
            elif offset == IIR_FCR:
                value = self._iir()
                if value & 0x0F == IIR_THRI:
                    self._thre_pending = False  # reading IIR clears a THRE interrupt
            elif offset == LCR:
                value = self.lcr
            elif offset == MCR:
                value = self.mcr
            elif offset == LSR:
                value = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
            elif offset == MSR:
                value = MSR_IDLE
            else:
                value = self.scr
            self._update_irq()
        return bytes([value]) * size
