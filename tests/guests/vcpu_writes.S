# Each vCPU writes (apic_id << 24) | i to port PORT for i = 1..COUNT, then halts: two vCPUs
# interleave writes on one port and every value says who wrote it and in which order.
        .code32
        .globl _start
_start:
        mov     $1, %eax
        cpuid
        and     $0xff000000, %ebx
        mov     $PORT, %edx
        mov     $1, %ecx
1:      mov     %ebx, %eax
        or      %ecx, %eax
        out     %eax, (%dx)
        inc     %ecx
        cmp     $COUNT, %ecx
        jbe     1b
        hlt
