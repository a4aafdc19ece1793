# For the GDB stub figures: COUNT turns of a loop, then `target` and the debug exit.
# RESET=0: a flat binary `xinterface run` starts in real mode at its first byte.
# RESET=1: a 64 KiB firmware image for QEMU's -bios, entered at the reset vector (0xfff0)
# with CS based at 0xffff0000, which jumps back to the first byte.
        .code16
        .globl  _start, target
_start: mov     $COUNT, %ecx
1:      dec     %ecx
        jnz     1b
target: xor     %al, %al
        out     %al, $0xf4
        hlt
        .if RESET
        .org    0xfff0
        jmp     _start
        .org    0x10000
        .endif
