# Each vCPU prints 'A' + its initial APIC id (CPUID.01H:EBX[31:24]) and halts. No stack is
# used: every vCPU starts with the same stack pointer.
        .code32
        .globl _start
_start:
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        lea     'A'(%ebx), %eax
        mov     $0xe9, %dx
        out     %al, (%dx)
        hlt
