# Replays a table of I/O accesses that the test wrote at TABLE (with copy_to), in order.
# Entry, 24 bytes: u8 kind, u8 size, 6 bytes pad, u64 addr, u64 value.
#   kind 0: end (hlt)   1: PIO write   2: MMIO write   3: PIO read   4: MMIO read
# Sizes: 1, 2, 4 for PIO; 1, 2, 4, 8 for MMIO. Long mode, so 8-byte MMIO exists and the
# loader's page tables map every address below 4 GiB.
        .code64
        .globl _start
_start:
        mov     $TABLE, %rsi
next:
        movzbl  (%rsi), %ecx
        movzbl  1(%rsi), %edi
        mov     8(%rsi), %rbx
        mov     16(%rsi), %rax
        add     $24, %rsi
        mov     %ebx, %edx
        cmp     $1, %ecx
        je      pio_write
        cmp     $2, %ecx
        je      mmio_write
        cmp     $3, %ecx
        je      pio_read
        cmp     $4, %ecx
        je      mmio_read
        hlt

pio_write:
        cmp     $1, %edi
        je      1f
        cmp     $2, %edi
        je      2f
        out     %eax, (%dx)
        jmp     next
1:      out     %al, (%dx)
        jmp     next
2:      out     %ax, (%dx)
        jmp     next

pio_read:
        cmp     $1, %edi
        je      1f
        cmp     $2, %edi
        je      2f
        in      (%dx), %eax
        jmp     next
1:      in      (%dx), %al
        jmp     next
2:      in      (%dx), %ax
        jmp     next

mmio_write:
        cmp     $1, %edi
        je      1f
        cmp     $2, %edi
        je      2f
        cmp     $4, %edi
        je      4f
        mov     %rax, (%rbx)
        jmp     next
1:      mov     %al, (%rbx)
        jmp     next
2:      mov     %ax, (%rbx)
        jmp     next
4:      mov     %eax, (%rbx)
        jmp     next

mmio_read:
        cmp     $1, %edi
        je      1f
        cmp     $2, %edi
        je      2f
        cmp     $4, %edi
        je      4f
        mov     (%rbx), %rax
        jmp     next
1:      mov     (%rbx), %al
        jmp     next
2:      mov     (%rbx), %ax
        jmp     next
4:      mov     (%rbx), %eax
        jmp     next
