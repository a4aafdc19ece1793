"""IRET in 32-bit protected mode, which KVM's instruction emulator lacks (runner/emulate.py
finishes it where KVM reports the emulation failure; on hosts that run guest CPL0 code
natively the CPU does it and the outcome is the same)."""

from __future__ import annotations

import io

import xinterface as xi
from tests.conftest import Assemble, needs_kvm

pytestmark = needs_kvm
REPORT = 0x500
TICKS = 5


def test_iret_by_hand_and_from_timer_interrupts(guest: Assemble) -> None:
    image = guest("iret", mode="protected", TICKS=TICKS, REPORT=REPORT)
    words: list[int] = []
    console = io.BytesIO()
    with xi.Machine(memory=2 << 20, irqchip=True, console=console) as m:
        m.load_flat(image, gpa=0x1000, mode="protected")
        intf = xi.bind(m)
        intf.iorange(REPORT, 4, xi.XIOEventFlags.PIO,
                     write=lambda offset, data: words.append(int.from_bytes(data, "little")))
        result = m.run(timeout=30)
    # "A": a 32-bit IRET landed with the carry flag of its frame; "B": the same, 16-bit.
    assert console.getvalue() == b"AB"
    ticks = (result.exit_code or 0) >> 1
    assert result.reason == "exit" and ticks >= TICKS
    frames = [words[i:i + 3] for i in range(0, len(words), 3)]
    assert len(frames) == ticks
    for eip, cs, eflags in frames:
        # Each interrupt came in the loop and IRET went back there: the loop ran on.
        assert 0x1000 <= eip < 0x1000 + len(image) and cs == 0x08
        assert eflags & 0x202 == 0x202            # IF was on, bit 1 always set


def test_interrupts_on_a_stack_segment_with_a_base(guest: Assemble) -> None:
    """kvm_pvm pushes an interrupt's frame at linear ESP, ignoring SS's base (a CPU pushes it
    at base + ESP); the handler's IRET then finds its frame at linear ESP, and the loop runs
    on either way."""
    base = 0x10000
    image = guest("iret_ss_base", mode="protected", TICKS=TICKS, REPORT=REPORT,
                  STACK_BASE=base)
    words: list[int] = []
    with xi.Machine(memory=2 << 20, irqchip=True, console=io.BytesIO()) as m:
        m.load_flat(image, gpa=0x1000, mode="protected")
        xi.bind(m).iorange(REPORT, 4, xi.XIOEventFlags.PIO,
                           write=lambda offset, data: words.append(
                               int.from_bytes(data, "little")))
        result = m.run(timeout=30)
    ticks = (result.exit_code or 0) >> 1
    assert result.reason == "exit" and ticks >= TICKS
    reports = [words[i:i + 7] for i in range(0, len(words), 7)]
    assert len(reports) == ticks
    for esp, *through_ss in reports:
        # 0x1000 - 12 (the frame) - 12 (three pushes): the interrupt left ESP where a CPU does.
        assert esp == 0x1000 - 24
        flat = through_ss[3:]
        frame = through_ss[:3] if through_ss[1] == 0x08 else flat
        eip, cs, eflags = frame
        assert 0x1000 <= eip < 0x1000 + len(image) and cs == 0x08
        assert eflags & 0x202 == 0x202
