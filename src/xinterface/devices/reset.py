"""Ways a PC guest asks for a reset: the reset control register at 0xcf9 (Intel PIIX/ICH
datasheets: bit 2 starts the reset) and the keyboard controller's pulse command 0xfe written
to port 0x64 (IBM PC/AT). Either ends the run with reason ``"reset"``."""

from __future__ import annotations

from ..xinterface import XInterface, XIOEvent, XIOEventFlags

RESET_CONTROL_PORT = 0xCF9
RESET_CONTROL_RST_CPU = 0x04
KBC_COMMAND_PORT = 0x64
KBC_PULSE_RESET = 0xFE


class ResetControl:
    def __init__(self) -> None:
        self._events: list[XIOEvent] = []
        self._intf: XInterface | None = None

    def attach(self, intf: XInterface) -> None:
        self._intf = intf
        self._events = [
            intf.ioevent(RESET_CONTROL_PORT, 1, XIOEventFlags.PIO, signal=self._cf9),
            intf.ioevent(KBC_COMMAND_PORT, 1, XIOEventFlags.PIO, signal=self._kbc),
        ]

    def detach(self) -> None:
        for ev in self._events:
            ev.deassign()
        self._events = []

    def _cf9(self, ev: XIOEvent, payload: bytes) -> None:
        if payload[0] & RESET_CONTROL_RST_CPU:
            ev.intf.vm.request_reset()

    def _kbc(self, ev: XIOEvent, payload: bytes) -> None:
        if payload[0] == KBC_PULSE_RESET:
            ev.intf.vm.request_reset()
