# A boot sector for a virtio-blk disk served over vhost-user. SeaBIOS loads it at 0x7c00 and
# jumps to it in real mode with DL = the drive. It reads sector 1 with INT 13h (AH=02h) to
# 0x8000 and prints on port 0x402 (the debug console) "blk boot: sum=XXXX\n", the 16-bit sum
# of that sector's words; then writes itself (512 bytes at 0x7c00) to sector 2 (AH=03h) and
# prints "blk write: ok\n" or "blk write: failed\n". Then it ends the run through the
# debug-exit port (0xf4, value 0), or with SPIN=1 spins there for ever (to be killed).
        .code16
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        mov     %dl, drive
        mov     $0x0201, %ax                    # read one sector
        mov     $0x0002, %cx                    # cylinder 0, sector 2 (sectors count from 1)
        xor     %dh, %dh
        mov     $0x8000, %bx
        int     $0x13
        jc      readfail
        xor     %dx, %dx
        mov     $256, %cx
        mov     $0x8000, %si
1:      lodsw
        add     %ax, %dx
        loop    1b
        mov     %dx, %bp
        mov     $msg, %si
        call    puts
        mov     %bp, %ax
        mov     $4, %cx
2:      rol     $4, %ax
        mov     %ax, %bx
        and     $0xf, %bx
        mov     hex(%bx), %bl
        xchg    %ax, %bx
        mov     $0x402, %dx
        out     %al, (%dx)
        xchg    %ax, %bx
        loop    2b
        mov     $'\n', %al
        mov     $0x402, %dx
        out     %al, (%dx)
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

puts:   mov     $0x402, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      ret

drive:  .byte   0
msg:    .asciz  "blk boot: sum="
failed: .asciz  "blk boot: INT 13h failed\n"
wrote:  .asciz  "blk write: ok\n"
wfailed: .asciz "blk write: failed\n"
hex:    .ascii  "0123456789abcdef"
        .org    510
        .word   0xaa55
