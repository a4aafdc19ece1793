# Prints 1 to LIMIT in decimal, one per line, on the debug console (port 0xe9), then ends
# through the debug exit port with status 5 (a write of 2). The count lives in memory
# (COUNTER) and in %ebx, which must agree before each line,
# so a snapshot that loses memory or a register shows in the lines a restore prints
# ("b" and status 7 when they disagree).
        .equ    LIMIT, 99
        .equ    COUNTER, 0x8000
        .code32
        .globl _start
_start:
        movl    $0, COUNTER
        xor     %ebx, %ebx
        mov     $0x7000, %esp
1:      incl    COUNTER
        inc     %ebx
        cmp     COUNTER, %ebx
        jne     bad
        mov     %ebx, %eax
        xor     %ecx, %ecx              # digits pushed
2:      xor     %edx, %edx
        mov     $10, %esi
        div     %esi
        add     $'0', %dl
        push    %edx
        inc     %ecx
        test    %eax, %eax
        jnz     2b
        mov     $0xe9, %dx
3:      pop     %eax
        out     %al, (%dx)
        loop    3b
        mov     $'\n', %al
        out     %al, (%dx)
        cmp     $LIMIT, %ebx
        jb      1b
        mov     $2, %al
        out     %al, $0xf4
        hlt
bad:    mov     $0xe9, %dx
        mov     $'b', %al
        out     %al, (%dx)
        mov     $'\n', %al
        out     %al, (%dx)
        mov     $3, %al
        out     %al, $0xf4
        hlt
