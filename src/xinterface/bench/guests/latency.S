# Write-to-handler latency: COUNT rounds of
#   a SYNC write of the round number to STAMP (the host notes the time),
#   a write to TARGET (the path under test),
#   a wait until the host's handler has stored the round number at ACK.
        .code32
        .globl _start
_start:
        mov     $1, %ecx
1:      mov     %ecx, %eax
        mov     $STAMP, %edx
        out     %eax, (%dx)
        mov     $TARGET, %edx
        out     %eax, (%dx)
2:      cmp     %ecx, ACK
        jne     2b
        inc     %ecx
        cmp     $COUNT, %ecx
        jbe     1b
        hlt
