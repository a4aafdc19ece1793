# Drives fw_cfg's DMA interface with the descriptors the test placed in RAM. TABLE holds their
# guest-physical addresses (u32, ending with 0xffffffff). For each: write the address (high
# half 0, low half big-endian) to ports 0x514/0x518, then report the descriptor's control
# word, as read back, on port REPORT. Finally the traditional interface: select the signature
# (key 0) on 0x510 and copy four bytes from 0x511 to the debug console.
        .code32
        .globl _start
_start:
        mov     $TABLE, %esi
next:   lodsl
        cmp     $0xffffffff, %eax
        je      traditional
        mov     %eax, %ebx
        xor     %eax, %eax
        mov     $0x514, %dx
        out     %eax, (%dx)
        mov     %ebx, %eax
        bswap   %eax
        mov     $0x518, %dx
        out     %eax, (%dx)             # starts the transfer
        mov     (%ebx), %eax            # control, as fw_cfg left it (big-endian in memory)
        mov     $REPORT, %dx
        out     %eax, (%dx)
        jmp     next
traditional:
        xor     %eax, %eax
        mov     $0x510, %dx
        out     %ax, (%dx)
        mov     $4, %ecx
1:      mov     $0x511, %dx
        in      (%dx), %al
        mov     $0xe9, %dx
        out     %al, (%dx)
        loop    1b
        hlt
