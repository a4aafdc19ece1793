# Hello from 64-bit long mode (identity-mapped page tables set up by the loader).
        .code64
        .globl _start
_start:
        lea     msg(%rip), %rsi
        mov     $0xe9, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      mov     $0xfee00000, %rax       # touch an address above 3 GiB: mapped, MMIO, ignored
        movl    $0, (%rax)
        hlt
msg:    .asciz  "Hello from long mode\n"
