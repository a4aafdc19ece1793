# The smallest whole guest, for start-up figures: one byte to the debug console (port 0xe9),
# then the debug exit (port 0xf4) with status (0 << 1) | 1.
# RESET=0: a flat binary that `xinterface run` starts in real mode at its first byte.
# RESET=1: a 64 KiB firmware image for QEMU's -bios, the same code at the reset vector
# (offset 0xfff0 of the image, mapped just below 1 MiB and 4 GiB: a PC's first fetch).
        .code16
        .globl  _start
        .if RESET
        .org    0xfff0
        .endif
_start: mov     $'H', %al
        out     %al, $0xe9
        xor     %al, %al
        out     %al, $0xf4
        hlt
        .if RESET
        .org    0x10000
        .endif
