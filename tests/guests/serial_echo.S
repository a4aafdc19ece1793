# An interactive guest on COM1 (polled): prints "ready", then echoes every byte it receives,
# lower-case letters made upper-case (so the echo is the guest's, not the terminal's).
# '.' ends it with hlt (status 0); '!' triple-faults it (an empty IDT, then ud2).
        .code32
        .globl _start
_start:
        mov     $0x3fb, %dx             # LCR: 8N1
        mov     $0x03, %al
        out     %al, (%dx)
        mov     $banner, %esi
1:      lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     1b
2:      mov     $0x3fd, %dx             # LSR: wait for data ready
3:      in      (%dx), %al
        test    $0x01, %al
        jz      3b
        mov     $0x3f8, %dx
        in      (%dx), %al
        cmp     $'.', %al
        je      done
        cmp     $'!', %al
        je      crash
        cmp     $'a', %al
        jb      4f
        cmp     $'z', %al
        ja      4f
        sub     $0x20, %al
4:      call    putc
        jmp     2b
done:   call    putc
        hlt
crash:  lidt    empty_idt
        ud2

putc:   mov     %al, %ah                # wait for THRE, then send %al
        mov     $0x3fd, %dx
5:      in      (%dx), %al
        test    $0x20, %al
        jz      5b
        mov     %ah, %al
        mov     $0x3f8, %dx
        out     %al, (%dx)
        ret

banner: .asciz  "ready\r\n"
        .p2align 2
empty_idt:
        .word   0
        .long   0
