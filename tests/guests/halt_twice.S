# Prints "A" on the debug console and halts; a run that resumes it past that hlt prints "B"
# and halts again.
        .code32
        .globl _start
_start:
        mov     $0xe9, %dx
        mov     $'A', %al
        out     %al, (%dx)
        hlt
        mov     $'B', %al
        out     %al, (%dx)
        hlt
