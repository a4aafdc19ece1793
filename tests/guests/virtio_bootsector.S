# A boot sector for a virtio-blk disk. SeaBIOS loads it at 0x7c00 and jumps to it in real
# mode with DL = the drive. It reads sector 1 with INT 13h (AH=02h) to 0x8000 and prints on
# port 0x402 (SeaBIOS's debug console) "virtio boot: sum=XXXX\n", the 16-bit sum of that
# sector's words, then ends the run (debug exit port 0xf4, value 0).
        .code16
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        mov     $0x0201, %ax                    # read one sector
        mov     $0x0002, %cx                    # cylinder 0, sector 2 (sectors count from 1)
        xor     %dh, %dh                        # head 0; DL: the drive SeaBIOS booted from
        mov     $0x8000, %bx
        int     $0x13
        jc      fail
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
        mov     $0, %al
        out     %al, $0xf4
fail:
        mov     $failed, %si
        call    puts
        mov     $1, %al
        out     %al, $0xf4

puts:   mov     $0x402, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      ret

msg:    .asciz  "virtio boot: sum="
failed: .asciz  "virtio boot: INT 13h failed\n"
hex:    .ascii  "0123456789abcdef"
        .org    510
        .word   0xaa55
