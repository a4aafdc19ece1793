"""Ways a PC guest asks for a reset: the reset control register at 0xcf9 (Intel PIIX/ICH
datasheets: bit 2 starts the reset) and the keyboard controller's pulse command 0xfe written
to port 0x64 (IBM PC/AT). Either ends the run with reason ``"reset"``."""

from __future__ import annotations

from ..interface import XInterface, XIOEvent, XIOEventFlags
from ..runstate import RunControl

RESET_CONTROL_PORT = 0xCF9
RESET_CONTROL_RST_CPU = 0x04
KBC_COMMAND_PORT = 0x64
KBC_PULSE_RESET = 0xFE


class ResetControl:
    """Both reset requests, ending the run through the VM's run control."""

    def __init__(self) -> None:
        self._events: list[XIOEvent] = []
        self._control: RunControl | None = None

    def attach(self, intf: XInterface) -> None:
        self._control = intf.vm.run_control
        self._events = [
            intf.ioevent(RESET_CONTROL_PORT, 1, XIOEventFlags.PIO, signal=self._cf9),
            intf.ioevent(KBC_COMMAND_PORT, 1, XIOEventFlags.PIO, signal=self._kbc),
        ]

    def detach(self) -> None:
        for ev in self._events:
            ev.deassign()
        self._events = []

    # Both ports are write-only triggers: nothing to save (devices/persist.py).
    def save(self) -> dict[str, object]:
        return {}

    def load(self, state: dict[str, object]) -> None:
        pass

    def _cf9(self, ev: XIOEvent, payload: bytes) -> None:
        if payload[0] & RESET_CONTROL_RST_CPU:
            self._reset()

    def _kbc(self, ev: XIOEvent, payload: bytes) -> None:
        if payload[0] == KBC_PULSE_RESET:
            self._reset()

    def _reset(self) -> None:
        assert self._control is not None
        self._control.request_reset()
