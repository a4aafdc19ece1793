# A boot sector for SeaBIOS: reads SECTORS sectors from LBA 1 of the boot drive through the
# BIOS (INT 13h, AH=42h extended read), prints "sum=XXXX\n" (the 16-bit sum of their words) on
# the debug console (port 0xe9) and ends the run through the debug-exit port (0xf4): status
# 0x21 after a good read, 0x23 when the BIOS reported an error.
        .include "bootsector.inc"
        .code16
        .globl  _start
_start:
        BOOT_SETUP
        mov     $0x42, %ah              # DL still holds the boot drive SeaBIOS passed
        mov     $dap, %si
        int     $0x13
        jc      fail
        mov     $0x8000, %si
        mov     $(SECTORS * 256), %cx
        xor     %bx, %bx
sum:    lodsw
        add     %ax, %bx
        loop    sum
        mov     $0xe9, %dx
        mov     $'s', %al
        out     %al, (%dx)
        mov     $'u', %al
        out     %al, (%dx)
        mov     $'m', %al
        out     %al, (%dx)
        mov     $'=', %al
        out     %al, (%dx)
        mov     $4, %cx
digit:  rol     $4, %bx
        mov     %bl, %al
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     1f
        add     $('a' - '9' - 1), %al
1:      out     %al, (%dx)
        loop    digit
        mov     $'\n', %al
        out     %al, (%dx)
        mov     $0x10, %al
        out     %al, $0xf4
        hlt
fail:   mov     $0x11, %al
        out     %al, $0xf4
        hlt
        .p2align 2
dap:    .byte   0x10, 0                 # size of this packet, reserved
        .word   SECTORS                 # sectors to read
        .word   0x8000, 0               # buffer offset, segment
        .quad   1                       # first LBA
        .org    510
        .byte   0x55, 0xaa
