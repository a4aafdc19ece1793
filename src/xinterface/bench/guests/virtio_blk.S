# A boot sector that drives a legacy virtio-blk at PCI 00:03.0 by itself, the same bytes under
# any VMM: QEMU (-device virtio-blk-pci,addr=3,disable-modern=on, after SeaBIOS loaded it
# from that very disk) and xinterface (load_flat at 0x7c00 on a VirtioPci(VirtioBlk)).
# It puts the I/O BAR at IOBASE, resets and initialises the device (virtio 1.2 §4.1.4.10 and
# §3.1.1, legacy), sets one queue of 256 entries at 0x10000, then runs ROUNDS rounds of DEPTH
# 4 KiB reads (chain i: header, buffer, status; sector 8*i), notifying once per round with an
# `outw` of queue index 0 and polling used.idx (interrupts off: VRING_AVAIL_F_NO_INTERRUPT).
# 'S' on the debug console (port 0xe9) as the rounds start, 'E' when they are done: the
# benchmark times that span. Ends through the debug-exit port: status 1 when every status
# byte read OK (0), 3 otherwise, 5 when the queue is not 256 entries.
        .code16
        .globl  _start
        .set    QSIZE, 256
        .set    RING_SEG, 0x1000        # desc at 0x10000, avail at 0x11000, used at 0x12000
        .set    AVAIL, 0x1000
        .set    USED, 0x2000
        .set    HDR, 0x13000            # DEPTH request headers, 16 bytes each
        .set    STATUS, 0x13800         # DEPTH status bytes
        .set    BUF, 0x20000            # DEPTH buffers of 4 KiB
        .set    CFG_ADDR, 0x80000000 | (3 << 11)
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7c00, %sp
        mov     $RING_SEG, %ax
        mov     %ax, %es
        # PCI: BAR0 = IOBASE, then I/O decode and bus mastering on.
        mov     $0xcf8, %dx
        mov     $(CFG_ADDR | 0x10), %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     $IOBASE, %eax
        out     %eax, %dx
        mov     $0xcf8, %dx
        mov     $(CFG_ADDR | 0x04), %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     $0x5, %ax
        out     %ax, %dx
        # Reset, ACKNOWLEDGE, DRIVER; no features.
        mov     $(IOBASE + 0x12), %dx
        xor     %al, %al
        out     %al, %dx
        mov     $1, %al
        out     %al, %dx
        mov     $3, %al
        out     %al, %dx
        mov     $(IOBASE + 0x04), %dx
        xor     %eax, %eax
        out     %eax, %dx
        # Queue 0 must have 256 entries (both VMMs' default).
        mov     $(IOBASE + 0x0e), %dx
        xor     %ax, %ax
        out     %ax, %dx
        mov     $(IOBASE + 0x0c), %dx
        in      %dx, %ax
        cmp     $QSIZE, %ax
        jne     badq
        # Zero the rings (12 KiB at 0x10000).
        xor     %di, %di
        xor     %ax, %ax
        mov     $0x1800, %cx
        cld
        rep stosw
        movw    $1, %es:AVAIL           # avail.flags = VRING_AVAIL_F_NO_INTERRUPT
        # The DEPTH chains: descriptors 3i, 3i+1, 3i+2; header i reads sector 8i.
        xor     %bx, %bx                # i
        xor     %di, %di                # descriptor table offset
chain:  movzx   %bx, %eax
        shl     $4, %eax
        add     $HDR, %eax              # header address
        mov     %eax, %es:0(%di)
        movl    $0, %es:4(%di)
        movl    $16, %es:8(%di)
        movw    $1, %es:12(%di)         # NEXT
        mov     %bx, %ax
        add     %ax, %ax
        add     %bx, %ax                # 3i
        inc     %ax
        mov     %ax, %es:14(%di)
        movzx   %bx, %eax
        shl     $12, %eax
        add     $BUF, %eax
        mov     %eax, %es:16(%di)
        movl    $0, %es:20(%di)
        movl    $4096, %es:24(%di)
        movw    $3, %es:28(%di)         # NEXT | WRITE
        mov     %bx, %ax
        add     %ax, %ax
        add     %bx, %ax
        add     $2, %ax                 # 3i + 2
        mov     %ax, %es:30(%di)
        movzx   %bx, %eax
        add     $STATUS, %eax
        mov     %eax, %es:32(%di)
        movl    $0, %es:36(%di)
        movl    $1, %es:40(%di)
        movw    $2, %es:44(%di)         # WRITE
        # header: type IN (0), reserved, sector 8i (in segment 0x1000 at HDR - 0x10000)
        mov     %bx, %si
        shl     $4, %si
        movl    $0, %es:(HDR - 0x10000)(%si)
        movl    $0, %es:(HDR - 0x10000 + 4)(%si)
        movzx   %bx, %eax
        shl     $3, %eax
        mov     %eax, %es:(HDR - 0x10000 + 8)(%si)
        movl    $0, %es:(HDR - 0x10000 + 12)(%si)
        add     $48, %di
        inc     %bx
        cmp     $DEPTH, %bx
        jne     chain
        # Queue address (page number), DRIVER_OK.
        mov     $(IOBASE + 0x08), %dx
        mov     $(0x10000 >> 12), %eax
        out     %eax, %dx
        mov     $(IOBASE + 0x12), %dx
        mov     $7, %al
        out     %al, %dx
        # The rounds. SI: avail.idx (free running).
        mov     $'S', %al
        out     %al, $0xe9
        movl    $ROUNDS, %ecx
        xor     %si, %si
round:  xor     %bx, %bx
post:   mov     %si, %di
        add     %bx, %di
        and     $(QSIZE - 1), %di
        shl     $1, %di
        mov     %bx, %ax
        add     %ax, %ax
        add     %bx, %ax                # head 3i
        mov     %ax, %es:(AVAIL + 4)(%di)
        inc     %bx
        cmp     $DEPTH, %bx
        jne     post
        add     $DEPTH, %si
        mov     %si, %es:(AVAIL + 2)    # publish avail.idx
        mov     $(IOBASE + 0x10), %dx
        xor     %ax, %ax
        out     %ax, %dx                # the doorbell: queue 0
wait:   cmp     %si, %es:(USED + 2)
        jne     wait
        addr32 loop round
        mov     $'E', %al
        out     %al, $0xe9
        # Every status byte must be 0 (VIRTIO_BLK_S_OK).
        mov     $(STATUS - 0x10000), %di
        mov     $DEPTH, %cx
check:  cmpb    $0, %es:(%di)
        jne     bad
        inc     %di
        loop    check
        xor     %al, %al
        out     %al, $0xf4              # status 1
        hlt
bad:    mov     $1, %al
        out     %al, $0xf4              # status 3
        hlt
badq:   mov     $2, %al
        out     %al, $0xf4              # status 5
        hlt
        .org    510
        .word   0xaa55
