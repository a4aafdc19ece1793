# A guest for GDB: symbols and line numbers (as -g), linked as linkers do
# (ld -m elf_i386 -Ttext=0x100000: the ELF header lies below the code). Exits with
# status (counter << 1) | 1: counter starts at 5 and func adds 1 twice.
        .code32
        .globl _start, func, counter
        .text
_start:
        mov     $0x90000, %esp
        movl    $5, counter
        call    func
        call    func
        mov     counter, %eax
        out     %al, $0xf4
        hlt
func:
        push    %ebp
        mov     %esp, %ebp
        addl    $1, counter
        pop     %ebp
        ret
        .data
counter:
        .long   0
