# Reads and writes of each size through PIO and MMIO, results echoed on the debug console:
#   in from 0xe9 (reads 0xe9), in from unclaimed 0x3ff (all-ones, 1/2/4 bytes),
#   a 4-byte MMIO read of unbacked memory (all-ones), then an MMIO write that is dropped.
        .code32
        .globl _start
_start:
        mov     $0xe9, %dx
        in      (%dx), %al
        out     %al, (%dx)              # e9
        mov     $0x3ff, %dx
        in      (%dx), %al
        mov     $0xe9, %dx
        out     %al, (%dx)              # ff
        mov     $0x3ff, %dx
        in      (%dx), %ax
        mov     $0xe9, %dx
        out     %ax, (%dx)              # ff ff  (a 2-byte write to the console)
        mov     $0x3ff, %dx
        in      (%dx), %eax
        mov     $0xe9, %dx
        out     %eax, (%dx)             # ff ff ff ff
        mov     $0xd0000000, %ebx
        mov     (%ebx), %eax
        out     %eax, (%dx)             # ff ff ff ff
        movl    $0x12345678, (%ebx)     # dropped
        mov     (%ebx), %eax
        out     %eax, (%dx)             # still ff ff ff ff: nothing kept it
        hlt
