# A level-triggered virtio-mmio interrupt through the IOAPIC and the local APIC.
#
# The guest drives the virtio-rng behind the transport at BASE (virtio 1.2 §4.2.3): one
# request of 16 bytes. Its interrupt comes on IOAPIC pin GSI, programmed level-triggered,
# active high (as the microvm DSDT declares it), vector 0x40; the 8259s are masked.
# The handler acknowledges the local APIC (EOI) but, the first time, not the device: the
# line must then come back at once, since InterruptStatus is still set. The second time it
# writes InterruptACK too; after that the line stays down. The guest then counts interrupts
# for a while more and writes the total to the debug-exit port: 1 means the line behaved as
# an edge.
        .code32
        .include "interrupts.inc"
        .globl _start
        .set    VECTOR, 0x40
        .set    IOAPIC, 0xfec00000
        .set    LAPIC, 0xfee00000
        .set    QUEUE_SEL, BASE + 0x030
        .set    QUEUE_NUM, BASE + 0x038
        .set    QUEUE_READY, BASE + 0x044
        .set    QUEUE_NOTIFY, BASE + 0x050
        .set    INTERRUPT_STATUS, BASE + 0x060
        .set    INTERRUPT_ACK, BASE + 0x064
        .set    STATUS, BASE + 0x070
        .set    DRIVER_FEATURES, BASE + 0x020
        .set    DRIVER_FEATURES_SEL, BASE + 0x024
        .set    QUEUE_DESC, BASE + 0x080
        .set    QUEUE_DRIVER, BASE + 0x090
        .set    QUEUE_DEVICE, BASE + 0x0a0
        .set    DESC, 0x10000
        .set    AVAIL, 0x11000
        .set    USED, 0x12000
        .set    DATA, 0x13000
_start:
        mov     $0x9000, %esp
        mov     $0xff, %al                      # both 8259s masked
        out     %al, $0x21
        out     %al, $0xa1
        idt_gate VECTOR, handler
        lidt    idt_desc
        movl    $0x1ff, LAPIC + 0xf0            # spurious vector register: APIC enabled
        movl    $(0x10 + 2 * GSI), IOAPIC       # redirection entry GSI, high: APIC ID 0
        movl    $(0x11 + 2 * GSI), IOAPIC
        movl    $0, IOAPIC + 0x10
        movl    $(0x10 + 2 * GSI), IOAPIC       # low: vector, fixed, physical, level, high
        movl    $(VECTOR | 1 << 15), IOAPIC + 0x10

        movl    $0, STATUS                      # the virtio-rng: reset, VERSION_1 only
        movl    $3, STATUS
        movl    $1, DRIVER_FEATURES_SEL
        movl    $1, DRIVER_FEATURES
        movl    $0xb, STATUS
        movl    $0, QUEUE_SEL
        movl    $8, QUEUE_NUM
        movl    $DESC, QUEUE_DESC
        movl    $AVAIL, QUEUE_DRIVER
        movl    $USED, QUEUE_DEVICE
        movl    $1, QUEUE_READY
        movl    $0xf, STATUS
        movl    $DATA, DESC                     # one device-writable buffer of 16 bytes
        movl    $0, DESC + 4
        movl    $16, DESC + 8
        movl    $2, DESC + 12
        movw    $0, AVAIL + 4
        movw    $1, AVAIL + 2
        sti
        movl    $0, QUEUE_NOTIFY
wait:   cmpl    $2, count
        jae     settle
        hlt
        jmp     wait
settle: mov     $200000, %ecx                   # more interrupts would come here
1:      loop    1b
        cli
        mov     count, %al
        out     %al, $0xf4

handler:
        push    %eax
        mov     INTERRUPT_STATUS, %eax
        incl    count
        cmpl    $1, count
        je      1f                              # the first time: the device is not told
        mov     %eax, INTERRUPT_ACK
1:      movl    $0, LAPIC + 0xb0                # EOI
        pop     %eax
        iret

        idt_table
count:  .long   0
