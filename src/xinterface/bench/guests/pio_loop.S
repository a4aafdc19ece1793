# The floor's guest loop, from source: COUNT one-byte writes to port PORT (nobody claims it,
# so each is a full exit to userspace), then hlt. Same two instructions as benchmarks/floor.c.
        .code32
        .globl _start
_start:
        mov     $COUNT, %ecx
        mov     $PORT, %edx
        mov     $0x41, %al
1:      out     %al, (%dx)
        loop    1b
        hlt
