# Interrupts taken in 32-bit protected mode on a stack segment whose base is not 0, as iPXE
# runs (its segments are based at its relocation offset): SS is based at STACK_BASE, ESP
# 0x1000. The in-kernel PIT's IRQ 0 (vector 0x20) interrupts a loop; the handler reports ESP
# and the three dwords above its own three pushes, read once through SS (where the CPU puts
# the frame) and once flat (linear ESP: where kvm_pvm puts it), 7 dwords on port REPORT,
# counts, acknowledges and returns with IRET. After TICKS interrupts the count goes to the
# debug-exit port.
        .code32
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
        mov     $handler, %eax                  # a 32-bit interrupt gate, selector 0x08
        mov     %ax, idt + 8 * VECTOR
        movw    $0x08, idt + 8 * VECTOR + 2
        movw    $0x8e00, idt + 8 * VECTOR + 4
        shr     $16, %eax
        mov     %ax, idt + 8 * VECTOR + 6
        lidt    idt_desc
        mov     $0x11, %al                      # 8259 ICW1-ICW4: vectors 0x20 and 0x28
        out     %al, $0x20
        out     %al, $0xa0
        mov     $0x20, %al
        out     %al, $0x21
        mov     $0x28, %al
        out     %al, $0xa1
        mov     $0x04, %al
        out     %al, $0x21
        mov     $0x02, %al
        out     %al, $0xa1
        mov     $0x01, %al
        out     %al, $0x21
        out     %al, $0xa1
        mov     $0xfe, %al                      # only IRQ 0 unmasked
        out     %al, $0x21
        mov     $0xff, %al
        out     %al, $0xa1
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
        .balign 8
idt:    .fill   256, 8, 0
idt_desc:
        .word   256 * 8 - 1
        .long   idt
ticks:  .long   0
