# Writes port 0x99, which no device claims, prints "ok" on the debug console and halts:
# dropped without --strict, the run's end with it.
        .code16
        .globl _start
_start:
        mov     $0x99, %dx
        out     %al, (%dx)
        mov     $0xe9, %dx
        mov     $'o', %al
        out     %al, (%dx)
        mov     $'k', %al
        out     %al, (%dx)
        hlt
