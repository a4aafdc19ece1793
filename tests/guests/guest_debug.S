# A guest that debugs itself: its own #BP and #DB handlers (IDT vectors 3 and 1) count what
# they get and keep the return EIP and DR6 they saw. 1. its own int3; 2. EFLAGS.TF over two
# nops; 3. its own DR0 execute breakpoint. Exits with bp_count | db_count << 4: one #BP,
# six #DB (TF traps after nop, nop, pushfl, andl and the popfl that clears it; DR0).
        .code32
        .include "interrupts.inc"
        .globl _start, before_int3, own_int3, after_int3, tf_on, dr_target, finish, bp_handler, db_handler
_start:
        mov     $0x9000, %esp
        idt_gate 1, db_handler
        idt_gate 3, bp_handler
        lidt    idt_desc
before_int3:
        nop
own_int3:
        int3
after_int3:
        pushfl
        orl     $0x100, (%esp)
        popfl
tf_on:  nop
        nop
        pushfl
        andl    $~0x100, (%esp)
        popfl
        mov     $dr_target, %eax
        mov     %eax, %dr0
        mov     $1, %eax
        mov     %eax, %dr7
dr_target:
        nop
        xor     %eax, %eax
        mov     %eax, %dr7
finish:
        mov     db_count, %eax
        shl     $4, %eax
        or      bp_count, %eax
        out     %al, $0xf4
        hlt

bp_handler:
        incl    bp_count
        push    %eax
        mov     4(%esp), %eax
        mov     %eax, bp_eip
        pop     %eax
        iret

db_handler:
        push    %eax
        push    %ebx
        mov     db_count, %ebx
        mov     8(%esp), %eax
        mov     %eax, db_eip(,%ebx,4)
        mov     %dr6, %eax
        mov     %eax, db_dr6(,%ebx,4)
        incl    db_count
        orl     $0x10000, 16(%esp)              # RF: the return does not hit DR0 again
        xor     %eax, %eax
        mov     %eax, %dr6
        pop     %ebx
        pop     %eax
        iret

        idt_table
        .balign 4
        .globl  bp_count, db_count, bp_eip, db_eip, db_dr6
bp_count:       .long   0
db_count:       .long   0
bp_eip:         .long   0
db_eip:         .fill   8, 4, 0
db_dr6:         .fill   8, 4, 0
