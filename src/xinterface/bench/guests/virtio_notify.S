# The virtio notify benchmark guest (32-bit protected mode): sets up queue 0 (QSIZE entries)
# of the virtio device at BASE over virtio-mmio (version 2, VERSION_1 only), writes 1 to port
# STAMP (the start mark), then rings the doorbell COUNT times: a 4-byte write of the queue
# index to QueueNotify. REQUEST=1: before each doorbell it makes a 16-byte device-writable
# buffer available, and after it waits until the device has used it. Then hlt.
        .code32
        .globl _start
        .set    DEVICE_FEATURES_SEL, BASE + 0x014
        .set    DRIVER_FEATURES, BASE + 0x020
        .set    DRIVER_FEATURES_SEL, BASE + 0x024
        .set    QUEUE_SEL, BASE + 0x030
        .set    QUEUE_NUM, BASE + 0x038
        .set    QUEUE_READY, BASE + 0x044
        .set    QUEUE_NOTIFY, BASE + 0x050
        .set    STATUS, BASE + 0x070
        .set    QUEUE_DESC_LOW, BASE + 0x080
        .set    QUEUE_DRIVER_LOW, BASE + 0x090
        .set    QUEUE_DEVICE_LOW, BASE + 0x0a0
_start:
        movl    $0, STATUS                      # reset, ACKNOWLEDGE, DRIVER
        movl    $1, STATUS
        movl    $3, STATUS
        movl    $1, DRIVER_FEATURES_SEL
        movl    $1, DRIVER_FEATURES             # VIRTIO_F_VERSION_1
        movl    $0xb, STATUS                    # FEATURES_OK
        movl    $0, QUEUE_SEL
        movl    $QSIZE, QUEUE_NUM
        movl    $DESC, QUEUE_DESC_LOW
        movl    $AVAIL, QUEUE_DRIVER_LOW
        movl    $USED, QUEUE_DEVICE_LOW
        movl    $1, QUEUE_READY
        movl    $0xf, STATUS                    # DRIVER_OK
        movl    $BUFFER, DESC                   # descriptor 0: 16 device-writable bytes
        movl    $16, DESC + 8
        movw    $2, DESC + 12
        mov     $1, %eax
        mov     $STAMP, %dx
        out     %eax, (%dx)
        mov     $COUNT, %esi
        xor     %ecx, %ecx                      # avail.idx
next:
        .if REQUEST
        mov     %ecx, %edx
        and     $(QSIZE - 1), %edx
        movw    $0, AVAIL + 4(,%edx,2)
        inc     %ecx
        movw    %cx, AVAIL + 2
        .endif
        movl    $0, QUEUE_NOTIFY
        .if REQUEST
1:      cmpw    %cx, USED + 2
        jne     1b
        .endif
        dec     %esi
        jnz     next
        hlt
