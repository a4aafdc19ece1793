# A virtio-blk driver over virtio-mmio (virtio 1.2 §4.2.3, §3.1.1), in 32-bit protected mode.
# The device's window is at BASE. The guest resets it, negotiates VERSION_1 only, checks
# FEATURES_OK, sets up queue 0 (QSIZE entries: descriptors at DESC, driver area at AVAIL,
# device area at USED), sets DRIVER_OK, then sends one request: TYPE (0 read, 1 write) of one
# 512-byte sector SECTOR with its data buffer at DATA. The doorbell is a 4-byte write of the
# queue index to QueueNotify. It waits until used.idx moves, or the device status shows
# DEVICE_NEEDS_RESET; with IRQ set it waits in hlt for the interrupt on IRQ (8259 PIC) instead.
# It prints "status=SS device=DD isr=II sum=XXXXXXXX\n" on port 0xe9: the request's status
# byte, the device status register, InterruptStatus as first seen, and the sum of the data's
# 128 dwords (a read's checksum). With RECOVER set and the device needing a reset, it resets
# it, sets it up again and reads sector SECTOR into GOOD, printing a second line. With BOGUS
# set, a doorbell for queue 7, which does not exist, comes first.
        .code32
        .include "interrupts.inc"
        .globl _start
        .set    MAGIC, BASE + 0x000
        .set    VERSION, BASE + 0x004
        .set    DEVICE_ID, BASE + 0x008
        .set    DEVICE_FEATURES, BASE + 0x010
        .set    DEVICE_FEATURES_SEL, BASE + 0x014
        .set    DRIVER_FEATURES, BASE + 0x020
        .set    DRIVER_FEATURES_SEL, BASE + 0x024
        .set    QUEUE_SEL, BASE + 0x030
        .set    QUEUE_NUM_MAX, BASE + 0x034
        .set    QUEUE_NUM, BASE + 0x038
        .set    QUEUE_READY, BASE + 0x044
        .set    QUEUE_NOTIFY, BASE + 0x050
        .set    INTERRUPT_STATUS, BASE + 0x060
        .set    INTERRUPT_ACK, BASE + 0x064
        .set    STATUS, BASE + 0x070
        .set    QUEUE_DESC_LOW, BASE + 0x080
        .set    QUEUE_DESC_HIGH, BASE + 0x084
        .set    QUEUE_DRIVER_LOW, BASE + 0x090
        .set    QUEUE_DRIVER_HIGH, BASE + 0x094
        .set    QUEUE_DEVICE_LOW, BASE + 0x0a0
        .set    QUEUE_DEVICE_HIGH, BASE + 0x0a4
        .set    HDR, 0x13000
        .set    STATUSB, 0x13100
        .set    NEEDS_RESET, 0x40
        .set    VECTOR, 0x20 + IRQ

_start:
        cmpl    $0x74726976, MAGIC              # "virt"
        jne     bad_device
        cmpl    $2, VERSION
        jne     bad_device
        cmpl    $2, DEVICE_ID                   # a block device
        jne     bad_device
        .if IRQ
        call    setup_irq
        .endif
        call    setup
        mov     $TYPE, %eax
        mov     $DATA, %ebx
        call    request
        .if RECOVER
        testl   $NEEDS_RESET, STATUS
        jz      done
        call    setup                           # begins with a reset
        xor     %eax, %eax
        mov     $GOOD, %ebx
        call    request
        .endif
done:   mov     $0, %al
        out     %al, $0xf4                      # debug exit 0: ends the run, status 1

bad_device:
        mov     $'?', %al
        out     %al, $0xe9
        mov     $1, %al
        out     %al, $0xf4

# --- device initialization (§3.1.1, §4.2.3.1) --------------------------------------------
setup:
        movl    $0, STATUS                      # reset
        movl    $1, STATUS                      # ACKNOWLEDGE
        movl    $3, STATUS                      # DRIVER
        movl    $1, DEVICE_FEATURES_SEL
        testl   $1, DEVICE_FEATURES             # VIRTIO_F_VERSION_1 (bit 32) offered?
        jz      bad_device
        movl    $0, DRIVER_FEATURES_SEL
        movl    $0, DRIVER_FEATURES
        movl    $1, DRIVER_FEATURES_SEL
        movl    $1, DRIVER_FEATURES             # VERSION_1 only
        movl    $0xb, STATUS                    # FEATURES_OK
        testl   $8, STATUS                      # accepted?
        jz      bad_device
        movl    $0, QUEUE_SEL
        cmpl    $QSIZE, QUEUE_NUM_MAX
        jb      bad_device
        movl    $QSIZE, QUEUE_NUM
        movl    $DESC, QUEUE_DESC_LOW
        movl    $0, QUEUE_DESC_HIGH
        movl    $AVAIL, QUEUE_DRIVER_LOW
        movl    $0, QUEUE_DRIVER_HIGH
        movl    $USED, QUEUE_DEVICE_LOW
        movl    $0, QUEUE_DEVICE_HIGH
        movl    $0, AVAIL                       # avail flags and idx
        movl    $0, USED                        # used flags and idx
        movl    $1, QUEUE_READY
        movl    $0xf, STATUS                    # DRIVER_OK
        ret

# --- one request: %eax type, %ebx data buffer ---------------------------------------------
request:
        mov     %eax, HDR                       # struct virtio_blk_req: type
        movl    $0, HDR + 4                     # reserved
        movl    $SECTOR, HDR + 8                # sector (low, high)
        movl    $0, HDR + 12
        movb    $0xee, STATUSB
        # descriptor 0: the header, device-readable, NEXT -> 1
        movl    $HDR, DESC
        movl    $0, DESC + 4
        movl    $16, DESC + 8
        movw    $1, DESC + 12
        movw    $1, DESC + 14
        # descriptor 1: the data, device-writable for a read, NEXT -> 2
        mov     %ebx, DESC + 16
        movl    $0, DESC + 20
        movl    $512, DESC + 24
        mov     $1, %ecx
        test    %eax, %eax
        jnz     1f
        or      $2, %ecx
1:      movw    %cx, DESC + 28
        movw    $2, DESC + 30
        # descriptor 2: the status byte, device-writable
        movl    $STATUSB, DESC + 32
        movl    $0, DESC + 36
        movl    $1, DESC + 40
        movw    $2, DESC + 44
        movw    $0, DESC + 46
        # available ring: ring[idx % QSIZE] = 0, then idx + 1 (x86 keeps the stores in order)
        movzwl  AVAIL + 2, %ecx
        mov     %ecx, %edx
        and     $(QSIZE - 1), %edx
        movw    $0, AVAIL + 4(,%edx,2)
        inc     %ecx
        movw    %cx, AVAIL + 2
        movl    $-1, isr
        .if IRQ
        movl    $0, irq_seen
        .endif
        .if BOGUS
        movl    $7, QUEUE_NOTIFY                # a doorbell for a queue that does not exist
        .endif
        movl    $0, QUEUE_NOTIFY                # the doorbell: queue 0
wait:
        .if IRQ
        cmpl    $0, irq_seen
        jne     1f
        sti
        hlt                                     # the interrupt handler clears IF on entry
        jmp     wait
1:
        .else
        mov     INTERRUPT_STATUS, %edx          # an exit: a POSTED doorbell is served first
        cmpl    $-1, isr
        jne     2f
        test    %edx, %edx
        jz      2f
        mov     %edx, isr
2:
        .endif
        testl   $NEEDS_RESET, STATUS
        jnz     seen
        cmpw    %cx, USED + 2
        jne     wait
seen:
        .if IRQ == 0
        # The notification follows the used ring update (or DEVICE_NEEDS_RESET), from
        # another thread in EVENTFD mode: wait for it, then acknowledge it.
5:      mov     INTERRUPT_STATUS, %edx
        test    %edx, %edx
        jz      5b
        cmpl    $-1, isr
        jne     6f
        mov     %edx, isr
6:      mov     %edx, INTERRUPT_ACK
        .endif

report:
        mov     $msg_status, %esi
        call    puts
        movzbl  STATUSB, %eax
        call    puthex2
        mov     $msg_device, %esi
        call    puts
        mov     STATUS, %eax
        call    puthex2
        mov     $msg_isr, %esi
        call    puts
        mov     isr, %eax
        call    puthex2
        mov     $msg_sum, %esi
        call    puts
        xor     %eax, %eax                      # the sum of the data's dwords
        cmpb    $0, STATUSB
        jne     3f
        mov     $128, %ecx
        mov     %ebx, %esi
4:      add     (%esi), %eax
        add     $4, %esi
        loop    4b
3:      call    puthex8
        mov     $'\n', %al
        out     %al, $0xe9
        ret

# --- output on the debug console ------------------------------------------------------------
puts:   lodsb
        test    %al, %al
        jz      1f
        out     %al, $0xe9
        jmp     puts
1:      ret

puthex2:
        shl     $24, %eax
        mov     $2, %ecx
        jmp     puthex
puthex8:
        mov     $8, %ecx
puthex: rol     $4, %eax
        mov     %eax, %edx
        and     $0xf, %edx
        mov     hexdigits(%edx), %dl
        xchg    %eax, %edx
        out     %al, $0xe9
        xchg    %eax, %edx
        loop    puthex
        ret

        .if IRQ
# --- the interrupt: the 8259 PIC at vectors 0x20-0x2f, only line IRQ unmasked ------------------
setup_irq:
        idt_gate VECTOR, handler
        lidt    idt_desc
        pic_init (~(1<<IRQ)&0xff), 0xff
        ret

        # Never returns with iret (kvm_pvm's CPL0 emulator fails on it): it always interrupts
        # the hlt of the wait loop, so it drops the frame and goes back there.
handler:
        add     $12, %esp
        mov     INTERRUPT_STATUS, %edx          # why (§4.2.3.4), then acknowledge it
        mov     %edx, isr
        mov     %edx, INTERRUPT_ACK
        movl    $1, irq_seen
        mov     $0x20, %al                      # EOI to the master PIC
        out     %al, $0x20
        jmp     wait

        idt_table
irq_seen:
        .long   0
        .endif

isr:    .long   0
hexdigits:
        .ascii  "0123456789abcdef"
msg_status:
        .asciz  "status="
msg_device:
        .asciz  " device="
msg_isr:
        .asciz  " isr="
msg_sum:
        .asciz  " sum="
