# A virtio-blk driver for benchmarks over the modern virtio-pci interface (virtio 1.2 §4.1.4):
# the same bytes boot from the disk they then read through any PC firmware (SeaBIOS under
# QEMU, on virtio-blk-pci or vhost-user-blk-pci with disable-legacy=on) or run loaded flat by
# xinterface on its pc board (a transitional function, its modern interface used).
#
# The first 512 bytes are a boot sector (real mode, at 0x7c00): it reads the rest of the
# image from the boot drive to 0x7e00 through INT 13h AH=42h and enters protected mode.
# `load_flat(image, gpa=0x7c00, mode="protected")` with RIP at pm_entry starts there directly
# (our GDT has the same flat selectors 0x08 and 0x10).
#
# pm_entry (CPL0) finds the first virtio-blk function on PCI bus 0 (vendor 0x1af4, device
# 0x1001 transitional or 0x1042 modern, §4.1.2), puts its 64-bit memory BAR4 at BAR_ADDR,
# walks its capability list for the common and notification structures in that BAR
# (§4.1.4.3, §4.1.4.4), initialises the device (§3.1.1: reset, ACKNOWLEDGE, DRIVER,
# VERSION_1 only, FEATURES_OK), sets queue 0 to QSIZE entries at RINGS, builds DEPTH chains
# (chain i: 16-byte header reading sector 8*i, a 4 KiB buffer, a status byte) and sets
# DRIVER_OK. The rounds run at CPL3 (SYSEXIT, IOPL 3), as guests/virtio_net.S's do, out of
# the kernel-mode code that kvm_pvm emulates instruction by instruction; without paging of
# the guest's own (32-bit paging with 4 MiB pages triple-faulted when tried here), making a
# chain available still costs about 6 us on kvm_pvm, the same under every VMM and device.
# ROUNDS rounds: DEPTH heads made available, one 16-bit doorbell write of queue index 0 at
# the queue's notify address (cap.offset + queue_notify_off *
# notify_off_multiplier), then polling used.idx (VIRTQ_AVAIL_F_NO_INTERRUPT: no interrupts).
#
# Port 0xe9: 'S' as the rounds start, 'E' when they are done (the span the benchmark
# times). Then the debug exit (port 0xf4): status 1 when every status byte is OK (0), 3 when
# one is not, 5 when queue 0 has fewer than QSIZE entries, 7 when there is no virtio-blk on
# bus 0, 9 when the device refused FEATURES_OK, 11 when the common or notification
# structure is not in BAR4. A '?' on port 0xe9 precedes each failure.
        .include "pm_boot.inc"
        .code16
        .globl  _start
        .set    QSIZE, 256
        .set    RINGS, 0x10000                  # desc; avail at +0x1000, used at +0x2000
        .set    AVAIL, RINGS + 0x1000
        .set    USED, RINGS + 0x2000
        .set    HDR, 0x13000                    # DEPTH request headers, 16 bytes each
        .set    STATUS, 0x13800                 # DEPTH status bytes
        .set    BUF, 0x20000                    # DEPTH buffers of 4 KiB
        .set    BAR_ADDR, 0xfe000000            # BAR4: in both boards' PCI hole, 16 KiB aligned
        .set    MODERN_BAR, 4
        .set    SEL_CODE, 0x08
        .set    SEL_DATA, 0x10
        .set    SEL_UDATA, 0x23                 # SYSENTER_CS + 24, RPL 3
        .set    MSR_SYSENTER_CS, 0x174
        # struct virtio_pci_common_cfg (§4.1.4.3)
        .set    CC_DRIVER_FEATURE_SELECT, 0x08
        .set    CC_DRIVER_FEATURE, 0x0c
        .set    CC_DEVICE_STATUS, 0x14
        .set    CC_QUEUE_SELECT, 0x16
        .set    CC_QUEUE_SIZE, 0x18
        .set    CC_QUEUE_ENABLE, 0x1c
        .set    CC_QUEUE_NOTIFY_OFF, 0x1e
        .set    CC_QUEUE_DESC, 0x20
        .set    CC_QUEUE_DRIVER, 0x28
        .set    CC_QUEUE_DEVICE, 0x30

        PM_BOOT_SECTOR

        .code32
pm_entry:
        mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        lgdt    gdt_desc                        # ours when loaded flat, the same when booted
        mov     %cr0, %eax                      # caches on (CD, NW clear), as firmware
        and     $0x9fffffff, %eax               # leaves them, whoever started this code
        mov     %eax, %cr0                      # (a VMM may start it at CR0's reset value)

        # The first virtio-blk on bus 0 (function 0 of each slot). %ebp: its config address.
        mov     $0x80000000, %ebp
find:   xor     %eax, %eax
        call    cfg_read
        cmp     $0x10011af4, %eax               # transitional virtio-blk
        je      found
        cmp     $0x10421af4, %eax               # modern-only virtio-blk
        je      found
        add     $0x800, %ebp
        cmp     $0x80010000, %ebp
        jb      find
        mov     $3, %al
        jmp     fail

found:  mov     $0x04, %eax                     # command: decoding off while BAR4 moves
        xor     %ecx, %ecx
        call    cfg_write
        mov     $0x20, %eax                     # BAR4 (low half), BAR5 (high half)
        mov     $BAR_ADDR, %ecx
        call    cfg_write
        mov     $0x24, %eax
        xor     %ecx, %ecx
        call    cfg_write
        mov     $0x04, %eax                     # memory decoding, bus mastering
        mov     $0x6, %ecx
        call    cfg_write

        # The capability list (PCI 3.0 6.7; status bit 4 says there is one).
        mov     $0x04, %eax
        call    cfg_read
        test    $0x100000, %eax
        jz      no_cap
        mov     $0x34, %eax
        call    cfg_read
        movzbl  %al, %esi                       # %esi: this capability's offset
cap:    and     $0xfc, %esi
        jz      caps_done
        mov     %esi, %eax
        call    cfg_read
        mov     %eax, %edi                      # id, next, cap_len, cfg_type
        cmp     $0x09, %al                      # vendor-specific: struct virtio_pci_cap
        jne     cap_next
        lea     4(%esi), %eax
        call    cfg_read
        cmp     $MODERN_BAR, %al                # bar
        jne     cap_next
        lea     8(%esi), %eax
        call    cfg_read                        # offset
        add     $BAR_ADDR, %eax
        mov     %edi, %ecx
        shr     $24, %ecx                       # cfg_type
        cmp     $1, %ecx                        # VIRTIO_PCI_CAP_COMMON_CFG
        jne     1f
        cmpl    $0, common                      # the first of each type is the one to use
        jne     cap_next
        mov     %eax, common
        jmp     cap_next
1:      cmp     $2, %ecx                        # VIRTIO_PCI_CAP_NOTIFY_CFG
        jne     cap_next
        cmpl    $0, notify
        jne     cap_next
        mov     %eax, notify
        lea     16(%esi), %eax                  # notify_off_multiplier
        call    cfg_read
        mov     %eax, multiplier
cap_next:
        mov     %edi, %esi
        shr     $8, %esi
        and     $0xff, %esi
        jmp     cap
caps_done:
        mov     common, %ebx
        test    %ebx, %ebx
        jz      no_cap
        cmpl    $0, notify
        je      no_cap

        # §3.1.1: reset (and wait until the device reads 0), ACKNOWLEDGE, DRIVER.
        movb    $0, CC_DEVICE_STATUS(%ebx)
1:      cmpb    $0, CC_DEVICE_STATUS(%ebx)
        jne     1b
        movb    $1, CC_DEVICE_STATUS(%ebx)
        movb    $3, CC_DEVICE_STATUS(%ebx)
        movl    $0, CC_DRIVER_FEATURE_SELECT(%ebx)
        movl    $0, CC_DRIVER_FEATURE(%ebx)
        movl    $1, CC_DRIVER_FEATURE_SELECT(%ebx)
        movl    $1, CC_DRIVER_FEATURE(%ebx)     # VERSION_1 (bit 32) only
        movb    $0xb, CC_DEVICE_STATUS(%ebx)    # FEATURES_OK
        testb   $8, CC_DEVICE_STATUS(%ebx)
        jz      no_features
        movw    $0, CC_QUEUE_SELECT(%ebx)
        cmpw    $QSIZE, CC_QUEUE_SIZE(%ebx)
        jb      bad_queue
        movw    $QSIZE, CC_QUEUE_SIZE(%ebx)
        movl    $RINGS, CC_QUEUE_DESC(%ebx)
        movl    $0, CC_QUEUE_DESC + 4(%ebx)
        movl    $AVAIL, CC_QUEUE_DRIVER(%ebx)
        movl    $0, CC_QUEUE_DRIVER + 4(%ebx)
        movl    $USED, CC_QUEUE_DEVICE(%ebx)
        movl    $0, CC_QUEUE_DEVICE + 4(%ebx)
        movzwl  CC_QUEUE_NOTIFY_OFF(%ebx), %eax
        imul    multiplier, %eax
        add     notify, %eax
        mov     %eax, doorbell

        # The rings zeroed (12 KiB), avail.flags = VRING_AVAIL_F_NO_INTERRUPT.
        mov     $RINGS, %edi
        xor     %eax, %eax
        mov     $0xc00, %ecx
        cld
        rep stosl
        movw    $1, AVAIL
        # The DEPTH chains: descriptors 3i, 3i+1, 3i+2; header i reads sector 8i.
        xor     %ecx, %ecx                      # i
        mov     $RINGS, %edi                    # descriptor 3i
chain:  mov     %ecx, %eax
        shl     $4, %eax
        add     $HDR, %eax
        mov     %eax, 0(%edi)                   # header: addr, len 16, NEXT, next 3i+1
        movl    $0, 4(%edi)
        movl    $16, 8(%edi)
        lea     (%ecx, %ecx, 2), %edx           # 3i
        movw    $1, 12(%edi)
        lea     1(%edx), %esi
        mov     %si, 14(%edi)
        movl    $0, (%eax)                      # type IN (0), reserved
        movl    $0, 4(%eax)
        lea     (, %ecx, 8), %esi
        mov     %esi, 8(%eax)                   # sector 8i
        movl    $0, 12(%eax)
        mov     %ecx, %eax                      # buffer: 4 KiB, NEXT | WRITE, next 3i+2
        shl     $12, %eax
        add     $BUF, %eax
        mov     %eax, 16(%edi)
        movl    $0, 20(%edi)
        movl    $4096, 24(%edi)
        movw    $3, 28(%edi)
        lea     2(%edx), %esi
        mov     %si, 30(%edi)
        lea     STATUS(%ecx), %eax              # status: 1 byte, WRITE
        movb    $0xff, (%eax)
        mov     %eax, 32(%edi)
        movl    $0, 36(%edi)
        movl    $1, 40(%edi)
        movl    $2, 44(%edi)                    # flags WRITE, next 0
        add     $48, %edi
        inc     %ecx
        cmp     $DEPTH, %ecx
        jne     chain
        movw    $1, CC_QUEUE_ENABLE(%ebx)
        movb    $0xf, CC_DEVICE_STATUS(%ebx)    # DRIVER_OK

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

# Configuration space of the function at %ebp: dword register %eax (its low byte, dword
# aligned) read into %eax, or written with %ecx. %edx is clobbered.
cfg_read:
        and     $0xfc, %eax
        or      %ebp, %eax
        mov     $0xcf8, %dx
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        ret
cfg_write:
        and     $0xfc, %eax
        or      %ebp, %eax
        mov     $0xcf8, %dx
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     %ecx, %eax
        out     %eax, %dx
        ret

no_cap: mov     $5, %al
        jmp     fail
no_features:
        mov     $4, %al
        jmp     fail
bad_queue:
        mov     $2, %al
fail:   mov     %al, %ah
        mov     $'?', %al
        out     %al, $0xe9
        mov     %ah, %al
        out     %al, $0xf4
        hlt

# --- CPL3 -------------------------------------------------------------------------------------
user:   mov     doorbell, %ebx
        mov     $'S', %al
        out     %al, $0xe9
        mov     $ROUNDS, %ecx
        xor     %esi, %esi                      # avail.idx, free running
round:  xor     %edx, %edx
post:   lea     (%esi, %edx), %edi
        and     $(QSIZE - 1), %edi
        lea     (%edx, %edx, 2), %eax           # head 3i
        mov     %ax, AVAIL + 4(, %edi, 2)
        inc     %edx
        cmp     $DEPTH, %edx
        jne     post
        add     $DEPTH, %esi
        mov     %si, AVAIL + 2                  # publish avail.idx (stores stay in order)
        movw    $0, (%ebx)                      # the doorbell: queue 0
wait:   cmp     %si, USED + 2
        jne     wait
        loop    round
        mov     $'E', %al
        out     %al, $0xe9
        # Every status byte must be 0 (VIRTIO_BLK_S_OK).
        mov     $STATUS, %edi
        mov     $DEPTH, %ecx
check:  cmpb    $0, (%edi)
        jne     bad
        inc     %edi
        loop    check
        xor     %al, %al
        out     %al, $0xf4                      # status 1
1:      jmp     1b
bad:    mov     $1, %al
        out     %al, $0xf4                      # status 3
2:      jmp     2b

        .balign 4
common: .long   0
notify: .long   0
multiplier:
        .long   0
doorbell:
        .long   0
image_end:
