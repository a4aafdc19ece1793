# A boot sector for a virtio-blk disk served over vhost-user. SeaBIOS loads it at 0x7c00 and
# jumps to it in real mode with DL = the drive. It reads sector 1 with INT 13h (AH=02h) to
# 0x8000 and prints on port 0x402 (the debug console) "blk boot: sum=XXXX\n", the 16-bit sum
# of that sector's words; then writes itself (512 bytes at 0x7c00) to sector 2 (AH=03h) and
# prints "blk write: ok\n" or "blk write: failed\n". Then it ends the run through the
# debug-exit port (0xf4, value 0), or with SPIN=1 spins there for ever (to be killed).
        .include "bootsector.inc"
        .code16
        .globl _start
_start:
        BOOT_SETUP
        mov     %dl, drive
        READ_SECTOR_AND_PRINT_SUM msg, readfail
        mov     $0x0301, %ax                    # write one sector
        mov     $0x0003, %cx                    # cylinder 0, sector 3
        xor     %dh, %dh
        mov     drive, %dl
        mov     $0x7c00, %bx
        int     $0x13
        mov     $wrote, %si
        jnc     3f
        mov     $wfailed, %si
3:      call    puts
        jmp     done
readfail:
        mov     $failed, %si
        call    puts
done:
.if SPIN
4:      jmp     4b
.endif
        mov     $0, %al
        out     %al, $0xf4
5:      hlt
        jmp     5b

        PUTS_402

drive:  .byte   0
msg:    .asciz  "blk boot: sum="
failed: .asciz  "blk boot: INT 13h failed\n"
wrote:  .asciz  "blk write: ok\n"
wfailed: .asciz "blk write: failed\n"
hex:    .ascii  "0123456789abcdef"
        .org    510
        .word   0xaa55
