# Counts interrupts on IRQ line IRQ through the in-kernel 8259 PIC (remapped to vector
# 0x20 + IRQ). It reports 0 once ready; each interrupt then reports the running count on port REPORT (4 bytes); after
# COUNT of them the guest writes the count to the debug-exit port.
        .code32
        .include "interrupts.inc"
        .globl _start
        .set    VECTOR, 0x20 + IRQ
_start:
        idt_gate VECTOR, handler
        lidt    idt_desc

        pic_init (~(1<<IRQ)&0xff), 0xff                # only our line unmasked

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

        idt_table
