# The benchmark guest: COUNT writes of SIZE bytes to ADDR (a port, or an MMIO address when
# MMIO=1) in a two-instruction loop, then hlt. The C floor runs the same loop.
# SIZE=8 exists only for MMIO and needs long mode; everything else runs in protected mode.
        .if SIZE == 8
        .code64
        .else
        .code32
        .endif
        .globl _start
_start:
        mov     $COUNT, %ecx
        mov     $0x41, %eax
        .if MMIO
        mov     $ADDR, %ebx
        .if SIZE == 8
1:      mov     %rax, (%rbx)
        .elseif SIZE == 4
1:      mov     %eax, (%ebx)
        .elseif SIZE == 2
1:      mov     %ax, (%ebx)
        .else
1:      mov     %al, (%ebx)
        .endif
        .else
        mov     $ADDR, %edx
        .if SIZE == 4
1:      out     %eax, (%dx)
        .elseif SIZE == 2
1:      out     %ax, (%dx)
        .else
1:      out     %al, (%dx)
        .endif
        .endif
        loop    1b
        hlt
