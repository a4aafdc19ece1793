# Writes over the firmware ROM at ADDR (mapped read-only below 4 GiB), reads it back and
# prints the four bytes read on the debug console.
        .code32
        .globl _start
_start:
        mov     $ADDR, %ebx
        movl    $0x21212121, (%ebx)     # "!!!!": must be dropped
        mov     (%ebx), %eax
        mov     $0xe9, %dx
        out     %eax, (%dx)
        hlt
