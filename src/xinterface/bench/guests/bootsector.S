# A boot sector that any PC firmware runs at 0x7c00 in real mode, and that `load_flat(...,
# gpa=0x7c00, mode="real")` runs the same way: COUNT one-byte writes to the debug console
# (port 0xe9), then the debug exit (port 0xf4). Used to compare with QEMU on one binary.
        .code16
        .globl _start
_start:
        cli
        movl    $COUNT, %ecx
        mov     $0xe9, %dx
        mov     $'A', %al
1:      out     %al, (%dx)
        addr32 loop 1b                  # 32-bit counter: ECX
        xor     %al, %al
        out     %al, $0xf4              # exit status (0 << 1) | 1
        hlt
        .org    510
        .word   0xaa55                  # boot signature
