# Never halts and never exits: only stop() or a timeout ends it. Counts loops in %ecx.
        .code32
        .globl _start
_start:
1:      inc     %ecx
        jmp     1b
