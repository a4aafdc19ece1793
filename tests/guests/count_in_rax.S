# Counts in %eax forever: a guest that never halts, whose progress shows in its registers
# (what the QMP tests read with info registers).
        .code16
        .globl _start
_start:
        xor     %eax, %eax
1:      inc     %eax
        jmp     1b
