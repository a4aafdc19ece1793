# Counts from 1 to LIMIT in the 32-bit word COUNTER, writing each count to port PORT, then
# ends the run through the debug exit port (status 1; 3 when the counts disagreed): with the
# in-kernel irqchip a hlt would wait in the kernel for an interrupt that never comes. The count lives both in memory and in %ebx, which must agree before each
# write (0xdead is written otherwise), so a restore that loses memory or a register breaks
# the sequence the port sees. (No SSE: kvm_pvm emulates CPL0 protected-mode code and has
# no SSE emulation.)
        .code32
        .globl _start
_start:
        movl    $0, COUNTER
        xor     %ebx, %ebx
        mov     $PORT, %edx
1:      incl    COUNTER
        mov     COUNTER, %eax
        inc     %ebx
        cmp     %eax, %ebx
        jne     2f
        out     %eax, (%dx)
        cmp     $LIMIT, %eax
        jb      1b
        mov     $0, %al
        out     %al, $0xf4
        hlt
2:      mov     $0xdead, %eax
        out     %eax, (%dx)
        mov     $1, %al
        out     %al, $0xf4
        hlt
