# Counts interrupts on IRQ line IRQ through the in-kernel 8259 PIC (remapped to vector
# 0x20 + IRQ). It reports 0 once ready; each interrupt then reports the running count on port REPORT (4 bytes); after
# COUNT of them the guest writes the count to the debug-exit port.
        .code32
        .globl _start
        .set    VECTOR, 0x20 + IRQ
_start:
        # The IDT gate for VECTOR: a 32-bit interrupt gate to `handler`, selector 0x08.
        mov     $handler, %eax
        mov     %ax, idt + 8 * VECTOR
        movw    $0x08, idt + 8 * VECTOR + 2
        movw    $0x8e00, idt + 8 * VECTOR + 4
        shr     $16, %eax
        mov     %ax, idt + 8 * VECTOR + 6
        lidt    idt_desc

        # 8259 initialisation (ICW1-ICW4): master at vector 0x20, slave at 0x28, 8086 mode.
        mov     $0x11, %al
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
        mov     $(~(1 << IRQ) & 0xff), %al      # only our line unmasked
        out     %al, $0x21
        mov     $0xff, %al
        out     %al, $0xa1

        xor     %ebx, %ebx
        mov     $REPORT, %dx                    # report 0: ready, interrupts may come
        xor     %eax, %eax
        out     %eax, (%dx)
wait:   cmp     $COUNT, %ebx
        jae     done
        sti
        hlt                                     # in-kernel irqchip: waits for the interrupt
        jmp     wait
done:   cli
        mov     %bl, %al
        out     %al, $0xf4

        # The handler never returns with iret (kvm_pvm's CPL0 emulator fails on it): the
        # interrupted code is always the wait loop, so it drops the frame and jumps back.
handler:
        add     $12, %esp                       # eip, cs, eflags of the interrupted hlt
        inc     %ebx
        mov     %ebx, %eax
        mov     $REPORT, %dx
        out     %eax, (%dx)
        mov     $0x20, %al                      # non-specific EOI to the master PIC
        out     %al, $0x20
        jmp     wait

        .balign 8
idt:    .fill   256, 8, 0
idt_desc:
        .word   256 * 8 - 1
        .long   idt
