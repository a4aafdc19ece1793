# HLT with the in-kernel irqchip: the PIT's IRQ 0 (1 kHz, vector 0x20) counts in `ticks`.
# wait_irq: a hlt with interrupts on (a tick wakes it); wait_forever: one with them off
# (nothing does).
        .code32
        .include "interrupts.inc"
        .globl _start, wait_irq, wait_forever, tick, ticks
_start:
        mov     $0x9000, %esp
        idt_gate 0x20, tick
        lidt    idt_desc
        pic_init 0xfe, 0xff
        mov     $0x34, %al                      # PIT channel 0, mode 2, binary
        out     %al, $0x43
        mov     $(1193182 / 1000) & 0xff, %al
        out     %al, $0x40
        mov     $(1193182 / 1000) >> 8, %al
        out     %al, $0x40
        sti
wait_irq:
        hlt
        cli
wait_forever:
        hlt
        jmp     wait_forever

tick:
        push    %eax
        incl    ticks
        mov     $0x20, %al                      # non-specific EOI
        out     %al, $0x20
        pop     %eax
        iret

        idt_table
ticks:  .long   0
