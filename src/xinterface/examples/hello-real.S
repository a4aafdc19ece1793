# Hello from 16-bit real mode: print on the debug console (port 0xe9), exit via port 0xf4.
        .code16
        .globl _start
_start:
        mov     $msg, %si
        mov     $0xe9, %dx
        mov     $len, %cx
        cld
        rep outsb               # string I/O: one exit, the VMM serves every byte
        mov     $0, %al
        out     %al, $0xf4      # debug exit: status (0 << 1) | 1 = 1
        hlt
msg:    .ascii  "Hello from real mode\n"
        .set    len, . - msg
