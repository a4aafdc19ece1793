# Counts in %eax forever: a guest that never halts, whose progress shows in its registers.
        .code16
        .globl _start
_start:
        xor     %eax, %eax
1:      inc     %eax
        jmp     1b
