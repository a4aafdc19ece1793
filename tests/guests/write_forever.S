# Writes its loop counter to port PORT (4 bytes) forever; only stop() or a timeout ends it.
        .code32
        .globl _start
_start:
        xor     %eax, %eax
        mov     $PORT, %edx
1:      inc     %eax
        out     %eax, (%dx)
        jmp     1b
