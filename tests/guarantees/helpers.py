"""Shared by the guarantee tests: constants, a watchdog for scenarios that used to hang, fd
counting. Races are widened on purpose (a guest-side spin between two writes, slow handlers, a
short GIL switch interval, repeated iterations) so that the defects they guard against fail
reliably; a scenario that used to hang runs on a daemon thread and fails when not done in time.
"""

from __future__ import annotations

import os
from typing import TypeVar

import xinterface as xi

PIO = xi.XIOEventFlags.PIO
SYNC, POSTED, EVENTFD = xi.Delivery.SYNC, xi.Delivery.POSTED, xi.Delivery.EVENTFD
P_PORT, S_PORT = 0x5A0, 0x5A4
FLAG = 0x8000
T = TypeVar("T")



def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))




def value(payload: bytes) -> int:
    return int.from_bytes(payload, "little") & 0xFFFFFF

ROM_SIZE = 256 << 10
ROM_BASE = (1 << 32) - ROM_SIZE  # 0xFFFC0000; its first 128 KiB have no RAM alias
