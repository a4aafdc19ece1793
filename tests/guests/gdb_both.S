# Two vCPUs that reach one breakpoint together: each calls hit() ROUNDS times as fast as
# it can (hit counts per vCPU in `hits`), vCPU 1 then sets `done`; vCPU 0 waits for it and
# exits with hits[0] | hits[1] << 4. Each vCPU finds its index in CPUID leaf 1 (the
# initial APIC id) and has its own stack.
        .code32
        .globl _start, hit, hits, done
        .set    ROUNDS, 5
        .text
_start:
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        mov     %ebx, %esp
        shl     $12, %esp
        add     $0x90000, %esp
        mov     $ROUNDS, %ecx
1:      call    hit
        loop    1b
        test    %ebx, %ebx
        jz      first
        movl    $1, done
        hlt
first:
        cmpl    $1, done
        jne     first
        mov     hits + 4, %eax
        shl     $4, %eax
        or      hits, %eax
        out     %al, $0xf4
        hlt
hit:
        incl    hits(,%ebx,4)
        ret
        .data
hits:   .long   0, 0
done:   .long   0
