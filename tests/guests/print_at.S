# Print the NUL-terminated string at PTR on the debug console, then halt.
        .code32
        .globl _start
_start:
        mov     $PTR, %esi
        mov     $0xe9, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      hlt
