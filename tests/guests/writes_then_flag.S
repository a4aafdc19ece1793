# Writes i to port PORT (4 bytes) for i = 1..COUNT, stores 1 at FLAG, then spins without an
# exit until the host stores 2 there; then writes AFTER more times and halts. While it spins,
# whatever the first writes left in the coalesced ring stays there until the host drains it.
        .code32
        .globl _start
_start:
        mov     $PORT, %edx
        mov     $1, %eax
1:      out     %eax, (%dx)
        inc     %eax
        cmp     $COUNT, %eax
        jbe     1b
        movl    $1, FLAG
2:      cmpl    $2, FLAG
        jne     2b
        mov     $AFTER, %ecx
        test    %ecx, %ecx
        jz      4f
3:      out     %eax, (%dx)
        loop    3b
4:      hlt
