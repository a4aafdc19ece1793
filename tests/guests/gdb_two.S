# Two vCPUs for GDB: each finds its index in CPUID leaf 1 (the initial APIC id); vCPU 1
# calls second() and writes 'B', vCPU 0 spins until that is done and then exits with 0x21
# (status 0x43). Each vCPU has its own stack.
        .code32
        .globl _start, second, done
        .text
_start:
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        mov     %ebx, %esp
        shl     $12, %esp
        add     $0x90000, %esp
        test    %ebx, %ebx
        jz      first
        call    second
        movl    $1, done
        hlt
first:
        cmpl    $1, done
        jne     first
        mov     $0x21, %al
        out     %al, $0xf4
        hlt
second:
        mov     $'B', %al
        out     %al, $0xe9
        ret
        .data
done:
        .long   0
