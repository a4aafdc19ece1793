# Reads CMOS registers NMI-masked (index | 0x80): status D, status B, seconds, and the
# extended-memory size (0x30, 0x31), each to the debug console.
        .code32
        .globl _start
_start:
        mov     $regs, %esi
        mov     $5, %ecx
1:      lodsb
        out     %al, $0x70
        in      $0x71, %al
        out     %al, $0xe9
        loop    1b
        hlt
regs:   .byte   0x8d, 0x8b, 0x80, 0xb0, 0xb1
