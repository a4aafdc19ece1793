# A virtio-net driver for benchmarks and tests: the same bytes boot from a disk through any PC
# firmware (QEMU's microvm with SeaBIOS, or ours) or run loaded flat by xinterface.
#
# The first 512 bytes are a boot sector (real mode, at 0x7c00): it reads the rest of the
# image from the boot drive to 0x7e00 through INT 13h AH=42h and enters protected mode with
# the GDT below. `load_flat(image[512:], gpa=0x7e00, mode="protected")` starts at pm_entry
# directly (our GDT has the same flat selectors 0x08 and 0x10).
#
# pm_entry (CPL0) finds the first virtio-mmio transport (virtio 1.2 §4.2) with device ID 1
# (net) among 24 slots from 0xfeb00000, 0x200 apart (QEMU's microvm layout), sets it up
# (§3.1.1: VERSION_1 only, so a 12-byte header, §5.1.6), then drops to CPL3 with SYSEXIT
# and IOPL 3: on hosts that emulate kernel-mode code instruction by instruction (kvm_pvm),
# user-mode code runs natively, so the packet loop costs what the device costs.
#
# MODE 0 (transmit): COUNT frames of SIZE bytes (header excluded), each carrying its sequence
# number at offset 14, through transmitq; the doorbell is rung unless the device set
# VIRTQ_USED_F_NO_NOTIFY (§2.7.10), as Linux's driver does.
# MODE 1 (receive): QSIZE buffers of 2048 bytes in receiveq, refilled as they come back;
# counts frames whose sequence number (offset 14) does not follow the previous frame's (the
# first frame's must be 0).
# Both rings carry VIRTQ_AVAIL_F_NO_INTERRUPT: the driver polls.
#
# Port 0xe9: 'R' once the queues are ready, 'S' at the first frame (receive) or before the
# first (transmit), 'E' when COUNT frames are done. Then the debug exit (port 0xf4) with
# the number of bad frames (capped at 125): status 1 for none. A '?' then status 0xff: no
# net device, or it refused the features or the queue size. A '!' then status 0xfd: used.idx
# claimed more buffers used than the driver had made available (a torn or wrong store of it).
        .include "pm_boot.inc"
        .code16
        .globl  _start
        .set    NET, 1                          # §5: device ID of a network card
        .set    SLOTS, 24
        .set    MMIO_BASE, 0xfeb00000
        .set    HDR, 12                         # §5.1.6 with VERSION_1
        .set    BUF, 2048
        .set    RXQ, 0x20000                    # receiveq: desc, avail +0x1000, used +0x2000
        .set    TXQ, 0x24000
        .set    RXBUF, 0x100000
        .set    TXBUF, 0x200000
        .set    FRAME_SEQ, HDR + 14             # the sequence number, after the Ethernet header
        .set    SEL_CODE, 0x08
        .set    SEL_DATA, 0x10
        .set    SEL_UCODE, 0x1b                 # SYSENTER_CS + 16, RPL 3
        .set    SEL_UDATA, 0x23                 # SYSENTER_CS + 24, RPL 3
        .set    MSR_SYSENTER_CS, 0x174
        # virtio-mmio registers (§4.2.2)
        .set    R_MAGIC, 0x000
        .set    R_VERSION, 0x004
        .set    R_DEVICE_ID, 0x008
        .set    R_DEVICE_FEATURES, 0x010
        .set    R_DEVICE_FEATURES_SEL, 0x014
        .set    R_DRIVER_FEATURES, 0x020
        .set    R_DRIVER_FEATURES_SEL, 0x024
        .set    R_QUEUE_SEL, 0x030
        .set    R_QUEUE_NUM_MAX, 0x034
        .set    R_QUEUE_NUM, 0x038
        .set    R_QUEUE_READY, 0x044
        .set    R_QUEUE_NOTIFY, 0x050
        .set    R_STATUS, 0x070
        .set    R_QUEUE_DESC, 0x080
        .set    R_QUEUE_DRIVER, 0x090
        .set    R_QUEUE_DEVICE, 0x0a0

        PM_BOOT_SECTOR

        .code32
pm_entry:
        mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        lgdt    gdt_desc                        # ours when loaded flat, the same when booted

        # Find the net device.
        mov     $MMIO_BASE, %ebx
        mov     $SLOTS, %ecx
find:   cmpl    $0x74726976, R_MAGIC(%ebx)      # "virt"
        jne     next
        cmpl    $2, R_VERSION(%ebx)
        jne     next
        cmpl    $NET, R_DEVICE_ID(%ebx)
        je      found
next:   add     $0x200, %ebx
        loop    find
        jmp     fail

found:  movl    $0, R_STATUS(%ebx)              # reset
        movl    $1, R_STATUS(%ebx)              # ACKNOWLEDGE
        movl    $3, R_STATUS(%ebx)              # DRIVER
        movl    $0, R_DRIVER_FEATURES_SEL(%ebx)
        movl    $0, R_DRIVER_FEATURES(%ebx)
        movl    $1, R_DRIVER_FEATURES_SEL(%ebx)
        movl    $1, R_DRIVER_FEATURES(%ebx)     # VERSION_1 (bit 32) only
        movl    $0xb, R_STATUS(%ebx)            # FEATURES_OK
        testl   $8, R_STATUS(%ebx)
        jz      fail
        xor     %eax, %eax
        mov     $RXQ, %edx
        call    queue
        mov     $1, %eax
        mov     $TXQ, %edx
        call    queue
        movl    $0xf, R_STATUS(%ebx)            # DRIVER_OK
        mov     %ebx, mmio

        .if USER == 0
        jmp     user
        .endif
        # To CPL3: SYSEXIT loads CS and SS from SYSENTER_CS + 16 and + 24 with RPL 3, EIP
        # from EDX and ESP from ECX; EFLAGS stays, so IOPL 3 is set before.
        mov     $MSR_SYSENTER_CS, %ecx
        mov     $SEL_CODE, %eax
        xor     %edx, %edx
        wrmsr
        pushf
        orl     $0x3000, (%esp)                 # IOPL 3: the debug ports from CPL3
        popf
        mov     $SEL_UDATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     $user, %edx
        mov     $0x6000, %ecx
        sysexit

# Queue %eax at %edx: QSIZE entries; descriptors at %edx, avail +0x1000, used +0x2000.
queue:  mov     %eax, R_QUEUE_SEL(%ebx)
        cmpl    $QSIZE, R_QUEUE_NUM_MAX(%ebx)
        jb      fail
        movl    $QSIZE, R_QUEUE_NUM(%ebx)
        mov     %edx, R_QUEUE_DESC(%ebx)
        movl    $0, R_QUEUE_DESC + 4(%ebx)
        lea     0x1000(%edx), %eax
        mov     %eax, R_QUEUE_DRIVER(%ebx)
        movl    $0, R_QUEUE_DRIVER + 4(%ebx)
        movl    $1, 0x1000(%edx)                # avail: flags NO_INTERRUPT, idx 0
        lea     0x2000(%edx), %eax
        mov     %eax, R_QUEUE_DEVICE(%ebx)
        movl    $0, R_QUEUE_DEVICE + 4(%ebx)
        movl    $0, 0x2000(%edx)                # used: flags, idx
        movl    $1, R_QUEUE_READY(%ebx)
        ret

fail:   mov     $'?', %al
        out     %al, $0xe9
        mov     $0x7f, %al
        out     %al, $0xf4
        hlt

# --- CPL3 -------------------------------------------------------------------------------------
user:   mov     mmio, %ebx
        xor     %ebp, %ebp                      # bad frames
        .if MODE == 0
        call    transmit
        .else
        call    receive
        .endif
        mov     $'E', %al
        out     %al, $0xe9
        cmp     $125, %ebp
        jbe     1f
        mov     $125, %ebp
1:      mov     %ebp, %eax
        out     %al, $0xf4
2:      jmp     2b

# Transmit COUNT frames. %esi: frames made available, %edi: frames used.
transmit:
        xor     %ecx, %ecx                      # descriptor i -> buffer i: header + frame
1:      mov     %ecx, %eax
        shl     $11, %eax
        add     $TXBUF, %eax
        mov     %ecx, %edx
        shl     $4, %edx
        mov     %eax, TXQ(%edx)
        movl    $0, TXQ + 4(%edx)
        movl    $HDR + SIZE, TXQ + 8(%edx)
        movl    $0, TXQ + 12(%edx)              # flags 0 (device-readable), next 0
        mov     %eax, %edi                      # the frame: header 0, broadcast, our MAC,
        push    %ecx                            # EtherType 0x88b5 (local experimental)
        mov     $(HDR + SIZE), %ecx
        xor     %eax, %eax
        rep     stosb
        pop     %ecx
        mov     %ecx, %eax
        shl     $11, %eax
        add     $TXBUF, %eax
        movl    $0xffffffff, HDR(%eax)
        movl    $0x5452ffff, HDR + 4(%eax)
        movl    $0x56341200, HDR + 8(%eax)
        movw    $0xb588, HDR + 12(%eax)
        inc     %ecx
        cmp     $QSIZE, %ecx
        jb      1b
        mov     $'R', %al
        out     %al, $0xe9
        mov     $'S', %al
        out     %al, $0xe9
        xor     %esi, %esi
        xor     %edi, %edi
tx_loop:
        cmp     $COUNT, %edi
        jae     tx_done
        movzwl  TXQ + 0x2000 + 2, %eax          # used.idx: reclaim
        sub     %di, %ax
        movzwl  %ax, %eax
        mov     %esi, %edx                      # no more than are outstanding
        sub     %edi, %edx
        cmp     %edx, %eax
        ja      torn
        add     %eax, %edi
        cmp     $COUNT, %esi
        jae     tx_loop
        mov     %esi, %eax
        sub     %edi, %eax
        cmp     $QSIZE, %eax
        jae     tx_loop                         # ring full
        mov     %esi, %edx
        and     $(QSIZE - 1), %edx
        mov     %edx, %eax                      # the sequence number in the frame
        shl     $11, %eax
        mov     %esi, TXBUF + FRAME_SEQ(%eax)
        mov     %dx, TXQ + 0x1000 + 4(,%edx,2)  # avail.ring[slot] = descriptor slot
        inc     %esi
        mov     %si, TXQ + 0x1000 + 2           # avail.idx (x86 keeps the stores in order)
        testw   $1, TXQ + 0x2000                # used.flags: NO_NOTIFY?
        jnz     tx_loop
        movl    $1, R_QUEUE_NOTIFY(%ebx)
        jmp     tx_loop
tx_done:
        ret

# Receive COUNT frames. %esi: buffers made available, %edi: frames received.
receive:
        xor     %ecx, %ecx
1:      mov     %ecx, %eax
        shl     $11, %eax
        add     $RXBUF, %eax
        mov     %ecx, %edx
        shl     $4, %edx
        mov     %eax, RXQ(%edx)
        movl    $0, RXQ + 4(%edx)
        movl    $BUF, RXQ + 8(%edx)
        movl    $2, RXQ + 12(%edx)              # VIRTQ_DESC_F_WRITE, next 0
        mov     %cx, RXQ + 0x1000 + 4(,%ecx,2)
        inc     %ecx
        cmp     $QSIZE, %ecx
        jb      1b
        mov     $QSIZE, %esi
        mov     %si, RXQ + 0x1000 + 2
        movl    $0, R_QUEUE_NOTIFY(%ebx)
        xor     %edi, %edi
        mov     $'R', %al
        out     %al, $0xe9
rx_first:
        cmpw    $0, RXQ + 0x2000 + 2
        je      rx_first
        mov     $'S', %al
        out     %al, $0xe9
rx_loop:
        cmp     $COUNT, %edi
        jae     rx_done
        movzwl  RXQ + 0x2000 + 2, %ecx          # used.idx
        cmp     %di, %cx
        je      rx_loop
        mov     %cx, %dx                        # no more than are outstanding
        sub     %di, %dx
        movzwl  %dx, %edx
        mov     %esi, %eax
        sub     %edi, %eax
        cmp     %eax, %edx
        ja      torn
rx_one: mov     %edi, %edx                      # used.ring[edi % QSIZE]: id, len
        and     $(QSIZE - 1), %edx
        mov     RXQ + 0x2000 + 4(,%edx,8), %eax # id
        mov     %eax, %edx
        shl     $11, %edx
        mov     RXBUF + FRAME_SEQ(%edx), %edx   # a frame that does not follow the last one
        inc     last_seq                        # (a drop, or a frame of someone else's)
        cmp     last_seq, %edx
        je      2f
        inc     %ebp
        mov     %edx, last_seq
2:      mov     %esi, %edx                      # give the buffer back
        and     $(QSIZE - 1), %edx
        mov     %ax, RXQ + 0x1000 + 4(,%edx,2)
        inc     %esi
        inc     %edi
        cmp     %di, %cx
        jne     rx_one
        mov     %si, RXQ + 0x1000 + 2           # avail.idx
        testw   $1, RXQ + 0x2000                # used.flags: NO_NOTIFY?
        jnz     rx_loop
        movl    $0, R_QUEUE_NOTIFY(%ebx)
        jmp     rx_loop
rx_done:
        ret

torn:   mov     $'!', %al
        out     %al, $0xe9
        mov     $0x7e, %al
        out     %al, $0xf4
1:      jmp     1b

        .balign 4
mmio:   .long   0
last_seq:
        .long   -1
image_end:
