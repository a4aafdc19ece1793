# CPUID probe: executes CPUID for each leaf of the table below and writes EAX, EBX, ECX and
# EDX of each, in that order, as 4-byte OUTs to port PROBE_PORT (given with --defsym), then
# halts. 32-bit protected mode, flat segments; no stack is used.
        .code32
        .globl _start
_start:
        lea     leaves, %esi
next:
        mov     (%esi), %eax
        mov     4(%esi), %ecx
        cmp     $0xffffffff, %eax
        je      done
        cpuid
        mov     %edx, %ebp              # OUT needs DX for the port and EAX for the data
        mov     $PROBE_PORT, %dx
        out     %eax, (%dx)
        mov     %ebx, %eax
        out     %eax, (%dx)
        mov     %ecx, %eax
        out     %eax, (%dx)
        mov     %ebp, %eax
        out     %eax, (%dx)
        add     $8, %esi
        jmp     next
done:
        hlt
        jmp     done

        .balign 4
leaves:                                 # (leaf, subleaf) pairs, ended by leaf 0xffffffff
        .long   0x00000001, 0
        .long   0x00000007, 0
        .long   0x40000001, 0
        .long   0x80000001, 0
        .long   0x80000008, 0
        .long   0xffffffff, 0
