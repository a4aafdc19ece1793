# Counts in memory until the host sets a flag: *COUNTER += 1 while *FLAG == 0, then writes
# the marker "done" at MARK and halts. The host reads the counter and sets the flag with
# copy_from/copy_to from another thread while this vCPU runs.
        .code32
        .globl _start
_start:
        movl    $0, COUNTER
1:      incl    COUNTER
        cmpl    $0, FLAG
        je      1b
        movl    $0x656e6f64, MARK       # "done"
        hlt
