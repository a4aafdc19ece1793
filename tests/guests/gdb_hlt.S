# HLT under a debugger without an in-kernel irqchip: nothing can wake the vCPU, so the run
# ends at its hlt (reason "hlt"). The exit below is never reached.
        .code32
        .globl _start, halt_here
_start:
        mov     $0x9000, %esp
        mov     $'H', %al
        out     %al, $0xe9
halt_here:
        hlt
        mov     $0x7f, %al
        out     %al, $0xf4
        hlt
