# Interrupts taken in 32-bit protected mode on a stack segment whose base is not 0, as iPXE
# runs (its segments are based at its relocation offset): SS is based at STACK_BASE, ESP
# 0x1000. The in-kernel PIT's IRQ 0 (vector 0x20) interrupts a loop; the handler reports ESP
# and the three dwords above its own three pushes, read once through SS (where the CPU puts
# the frame) and once flat (linear ESP: where kvm_pvm puts it), 7 dwords on port REPORT,
# counts, acknowledges and returns with IRET. After TICKS interrupts the count goes to the
# debug-exit port.
        .code32
        .include "interrupts.inc"
        .globl _start
        .set    VECTOR, 0x20
_start:
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     $0x18, %ax
        mov     %ax, %ss
        mov     $0x1000, %esp
        idt_gate VECTOR, handler
        lidt    idt_desc
        pic_init 0xfe, 0xff
        mov     $0x34, %al                      # PIT channel 0, mode 2, binary, 1 kHz
        out     %al, $0x43
        mov     $(1193182 / 1000) & 0xff, %al
        out     %al, $0x40
        mov     $(1193182 / 1000) >> 8, %al
        out     %al, $0x40
        sti
        .globl  loop_start
loop_start:
        cmpl    $TICKS, ticks
        jb      loop_start
        .globl  loop_end
loop_end:
        cli
        mov     ticks, %al
        out     %al, $0xf4

handler:
        push    %eax
        push    %edx
        push    %ebx
        mov     $REPORT, %dx
        mov     %esp, %eax
        out     %eax, (%dx)
        mov     12(%esp), %eax                  # through SS
        out     %eax, (%dx)
        mov     16(%esp), %eax
        out     %eax, (%dx)
        mov     20(%esp), %eax
        out     %eax, (%dx)
        mov     %esp, %ebx                      # flat
        mov     12(%ebx), %eax
        out     %eax, (%dx)
        mov     16(%ebx), %eax
        out     %eax, (%dx)
        mov     20(%ebx), %eax
        out     %eax, (%dx)
        incl    ticks
        mov     $0x20, %al                      # non-specific EOI
        out     %al, $0x20
        pop     %ebx
        pop     %edx
        pop     %eax
        iret

        .balign 8
gdt:    .quad   0
        .quad   0x00cf9a000000ffff              # 0x08: code, flat
        .quad   0x00cf92000000ffff              # 0x10: data, flat
        .quad   0x00cf92000000ffff | (STACK_BASE & 0xffffff) << 16 | (STACK_BASE >> 24) << 56
gdt_end:                                        # 0x18: data based at STACK_BASE
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt
        idt_table
ticks:  .long   0
