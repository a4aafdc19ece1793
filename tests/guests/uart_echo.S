# COM1: prints "hi\n" through the transmit register, then echoes COUNT received bytes,
# polling LSR.DR, each plus one, to the debug console.
        .code32
        .globl _start
_start:
        mov     $0x3fb, %dx             # LCR: 8N1
        mov     $0x03, %al
        out     %al, (%dx)
        mov     $msg, %esi
        mov     $3, %ecx
1:      mov     $0x3fd, %dx             # LSR: wait for THRE
2:      in      (%dx), %al
        test    $0x20, %al
        jz      2b
        lodsb
        mov     $0x3f8, %dx
        out     %al, (%dx)
        loop    1b
        mov     $0xe9, %dx              # ready to receive
        mov     $'R', %al
        out     %al, (%dx)
        mov     $COUNT, %ecx
3:      mov     $0x3fd, %dx             # LSR: wait for data ready
4:      in      (%dx), %al
        test    $0x01, %al
        jz      4b
        mov     $0x3f8, %dx
        in      (%dx), %al
        inc     %al
        mov     $0xe9, %dx
        out     %al, (%dx)
        loop    3b
        hlt
msg:    .ascii  "hi\n"
