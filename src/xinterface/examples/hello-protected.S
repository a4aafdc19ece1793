# Hello from 32-bit protected mode (flat segments set up by the loader).
        .code32
        .globl _start
_start:
        mov     $msg, %esi
        mov     $0xe9, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      hlt                     # halting ends the run with status 0
msg:    .asciz  "Hello from protected mode\n"
