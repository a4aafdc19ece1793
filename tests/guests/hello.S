# Print "hi" plus the CPU mode's letter on the debug console, then halt. Assembled once per mode
# with MODE = 16, 32 or 64; the same instructions run in each.
        .if MODE == 16
        .code16
        .elseif MODE == 32
        .code32
        .else
        .code64
        .endif
        .globl _start
_start:
        mov     $0xe9, %dx
        mov     $'h', %al
        out     %al, (%dx)
        mov     $'i', %al
        out     %al, (%dx)
        mov     $('0' + MODE / 16), %al   # '1', '2' or '4'
        out     %al, (%dx)
        hlt
