# One of each guest access the exit decoder types, then HLT: a 1-byte OUT, a 2-byte OUT to a
# 16-bit port, a 1-byte IN, a 3-element rep outsb, a 4-byte MMIO write and a 4-byte MMIO read
# above the 64 KiB of RAM the test gives the VM (segment 0xd000: address 0xd0010).
        .code16
        .globl _start
_start:
        cld
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $0x5a, %al
        out     %al, $0x80
        mov     $0x510, %dx
        mov     $0x1234, %ax
        out     %ax, %dx
        in      $0x81, %al
        mov     $msg, %si
        mov     $0x82, %dx
        mov     $3, %cx
        rep outsb
        mov     $0xd000, %ax
        mov     %ax, %ds
        movl    $0x11223344, 0x10
        movl    0x10, %eax
        hlt
msg:    .ascii  "xyz"
