# For i = 1..COUNT: write (apic_id << 24) | i to port POSTED, spin DELAY loops, write the same
# value to port SYNC; then halt. The spin gives a poller time to take the first write off the
# coalesced ring before the second one exits (tests/test_guarantees.py widens races with it).
        .code32
        .globl _start
_start:
        mov     $1, %eax
        cpuid
        and     $0xff000000, %ebx
        mov     $1, %ecx
1:      mov     %ebx, %eax
        or      %ecx, %eax
        mov     $POSTED, %edx
        out     %eax, (%dx)
        mov     $DELAY, %esi
2:      test    %esi, %esi
        jz      3f
        dec     %esi
        jmp     2b
3:      mov     $SYNC, %edx
        out     %eax, (%dx)
        inc     %ecx
        cmp     $COUNT, %ecx
        jbe     1b
        hlt
