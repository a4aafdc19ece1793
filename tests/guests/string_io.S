# String I/O both ways: rep insb/insw from ports into a buffer, rep outsb/outsw back out to the
# debug console. Port 0xe9 reads back 0xe9 (QEMU debugcon), an unclaimed port reads all-ones.
        .code16
        .globl _start
_start:
        cld
        xor     %ax, %ax
        mov     %ax, %es
        mov     $buf, %di
        mov     $0x3ff, %dx             # unclaimed: every byte reads 0xff
        mov     $4, %cx
        rep insb
        mov     $0xe9, %dx              # debugcon: reads 0xe9 in each byte of a word
        mov     $2, %cx
        rep insw
        mov     $buf, %si
        mov     $8, %cx
        rep outsb                       # 4 x ff then 4 x e9
        mov     $msg, %si
        mov     $3, %cx
        rep outsw                       # "ABCDEF" as three words
        hlt
msg:    .ascii  "ABCDEF"
buf:    .fill   8, 1, 0
