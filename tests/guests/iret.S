# IRET in 32-bit protected mode at CPL0, as firmware uses it (iPXE's interrupt wrappers):
# 1. a 32-bit IRET to a frame built by hand (EIP, CS, EFLAGS with the carry flag set): "A"
#    if it lands with CF set; 2. the same with a 16-bit operand (66 cf): "B";
# 3. the in-kernel PIT's IRQ 0 through the 8259 (vector 0x20) while a loop runs with
#    interrupts on: the handler reports the frame the CPU pushed (EIP, CS, EFLAGS: 4 bytes
#    each on port REPORT), counts, acknowledges and returns with IRET into the loop; after
#    TICKS interrupts the guest writes the count to the debug-exit port.
        .code32
        .include "interrupts.inc"
        .globl _start
        .set    VECTOR, 0x20
_start:
        mov     $0x9000, %esp
        pushfl
        orl     $1, (%esp)                      # CF in the frame's EFLAGS
        pushl   $0x08
        pushl   $1f
        clc
        iret
1:      jnc     bad
        mov     $'A', %al
        out     %al, $0xe9

        pushfw
        orw     $1, (%esp)
        pushw   $0x08
        pushw   $2f
        clc
        iretw
2:      jnc     bad
        mov     $'B', %al
        out     %al, $0xe9

        idt_gate VECTOR, handler
        lidt    idt_desc
        pic_init 0xfe, 0xff
        mov     $0x34, %al                      # PIT channel 0, mode 2, binary
        out     %al, $0x43
        mov     $(1193182 / 1000) & 0xff, %al   # 1 kHz
        out     %al, $0x40
        mov     $(1193182 / 1000) >> 8, %al
        out     %al, $0x40

        xor     %esi, %esi
        sti
        .globl  loop_start
loop_start:
        inc     %esi
        cmpl    $TICKS, ticks
        jb      loop_start
        .globl  loop_end
loop_end:
        cli
        mov     ticks, %al
        out     %al, $0xf4

bad:    mov     $0xff, %al
        out     %al, $0xf4

handler:
        push    %eax
        push    %edx
        mov     $REPORT, %dx
        mov     8(%esp), %eax                   # the frame: EIP, CS, EFLAGS
        out     %eax, (%dx)
        mov     12(%esp), %eax
        out     %eax, (%dx)
        mov     16(%esp), %eax
        out     %eax, (%dx)
        incl    ticks
        mov     $0x20, %al                      # non-specific EOI
        out     %al, $0x20
        pop     %edx
        pop     %eax
        iret

        idt_table
ticks:  .long   0
