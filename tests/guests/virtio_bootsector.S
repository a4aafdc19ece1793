# A boot sector for a virtio-blk disk. SeaBIOS loads it at 0x7c00 and jumps to it in real
# mode with DL = the drive. It reads sector 1 with INT 13h (AH=02h) to 0x8000 and prints on
# port 0x402 (SeaBIOS's debug console) "virtio boot: sum=XXXX\n", the 16-bit sum of that
# sector's words, then ends the run (debug exit port 0xf4, value 0).
        .include "bootsector.inc"
        .code16
        .globl _start
_start:
        BOOT_SETUP
        READ_SECTOR_AND_PRINT_SUM msg, fail
        mov     $0, %al
        out     %al, $0xf4
fail:
        mov     $failed, %si
        call    puts
        mov     $1, %al
        out     %al, $0xf4

        PUTS_402

msg:    .asciz  "virtio boot: sum="
failed: .asciz  "virtio boot: INT 13h failed\n"
hex:    .ascii  "0123456789abcdef"
        .org    510
        .word   0xaa55
