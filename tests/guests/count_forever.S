# Each vCPU counts forever in its own 32-bit word, COUNTER + 4 * its APIC id, and writes the
# count to port PORT each time it reaches a multiple of EVERY (a power of two): the counter
# shows whether the vCPU runs, the port writes (POSTED in the tests) fill the ring.
        .code32
        .globl _start
_start:
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        lea     COUNTER(,%ebx,4), %esi
        movl    $0, (%esi)
        mov     $PORT, %edx
1:      incl    (%esi)
        mov     (%esi), %eax
        test    $(EVERY - 1), %eax
        jnz     1b
        out     %eax, (%dx)
        jmp     1b
