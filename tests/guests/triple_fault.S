# An empty IDT, then an invalid opcode: #UD cannot be delivered, #DF cannot either, so the
# CPU shuts down (triple fault). Marker values in registers show up in the GuestError.
        .code32
        .globl _start
_start:
        lidt    idt
        mov     $0xdead, %ebx
        ud2
idt:    .word   0
        .long   0
