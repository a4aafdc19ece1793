# A boot sector that prints through a virtio-console (virtio 1.2 §5.3) over virtio-mmio: any
# PC firmware loads it at 0x7c00; it enters protected mode, finds the first virtio-mmio
# transport (24 slots from 0xfeb00000, 0x200 apart: the microvm layout) whose device is a
# console (ID 3), sets it up (VERSION_1 only), puts MESSAGE in transmitq (queue 1), rings
# the doorbell, waits for the used ring, and ends the run through the debug-exit port:
# status 0x21, or 0x23 if no console was found or it refused the features.
        .code16
        .globl  _start
        .set    SLOTS, 24
        .set    MMIO_BASE, 0xfeb00000
        .set    DESC, 0x10000
        .set    AVAIL, 0x11000
        .set    USED, 0x12000
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        lgdt    gdt_desc
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $pm

        .code32
pm:     mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        mov     $MMIO_BASE, %ebx
        mov     $SLOTS, %ecx
find:   cmpl    $0x74726976, (%ebx)             # MagicValue "virt"
        jne     next
        cmpl    $3, 8(%ebx)                     # DeviceID: console
        je      found
next:   add     $0x200, %ebx
        loop    find
        jmp     fail

found:  movl    $0, 0x70(%ebx)                  # Status: reset, ACKNOWLEDGE, DRIVER
        movl    $3, 0x70(%ebx)
        movl    $1, 0x24(%ebx)                  # DriverFeaturesSel 1: VERSION_1 only
        movl    $1, 0x20(%ebx)
        movl    $0xb, 0x70(%ebx)                # FEATURES_OK
        testl   $8, 0x70(%ebx)
        jz      fail
        movl    $1, 0x30(%ebx)                  # QueueSel: transmitq
        movl    $8, 0x38(%ebx)                  # QueueNum
        movl    $DESC, 0x80(%ebx)
        movl    $AVAIL, 0x90(%ebx)
        movl    $USED, 0xa0(%ebx)
        movl    $0, AVAIL
        movl    $0, USED
        movl    $1, 0x44(%ebx)                  # QueueReady
        movl    $0xf, 0x70(%ebx)                # DRIVER_OK
        movl    $message, DESC                  # one device-readable buffer
        movl    $0, DESC + 4
        movl    $(message_end - message), DESC + 8
        movl    $0, DESC + 12
        movw    $0, AVAIL + 4
        movw    $1, AVAIL + 2
        movl    $1, 0x50(%ebx)                  # QueueNotify: queue 1
wait:   cmpw    $1, USED + 2
        jne     wait
        mov     $0x10, %al
        out     %al, $0xf4
fail:   mov     $0x11, %al
        out     %al, $0xf4

        .balign 8
gdt:    .quad   0
        .quad   0x00cf9a000000ffff              # 0x08: code, flat, 32-bit
        .quad   0x00cf92000000ffff              # 0x10: data, flat
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt
message:
        .ascii  "hello from hvc0\n"
message_end:
        .org    510
        .word   0xaa55
