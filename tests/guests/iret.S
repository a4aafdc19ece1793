# IRET in 32-bit protected mode at CPL0, as firmware uses it (iPXE's interrupt wrappers):
# 1. a 32-bit IRET to a frame built by hand (EIP, CS, EFLAGS with the carry flag set): "A"
#    if it lands with CF set; 2. the same with a 16-bit operand (66 cf): "B";
# 3. the in-kernel PIT's IRQ 0 through the 8259 (vector 0x20) while a loop runs with
#    interrupts on: the handler reports the frame the CPU pushed (EIP, CS, EFLAGS: 4 bytes
#    each on port REPORT), counts, acknowledges and returns with IRET into the loop; after
#    TICKS interrupts the guest writes the count to the debug-exit port.
        .code32
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

        .balign 8
idt:    .fill   256, 8, 0
idt_desc:
        .word   256 * 8 - 1
        .long   idt
ticks:  .long   0
