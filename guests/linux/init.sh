#!/bin/sh
# /init of the xinterface test initramfs (Debian's busybox-static as /bin/busybox).
# Every system call goes through the emulated kernel on kvm_pvm (~0.6 ms each, about a second
# per fork+exec): the marker comes first, and the rest uses shell builtins where it can
# (read, not cat in a $(...) subshell).
echo "XINTERFACE-INIT-OK"
mount -t proc proc /proc
read -r cmdline < /proc/cmdline
echo "cmdline: $cmdline"
disk=
while read -r major minor blocks name; do
    [ "$name" = vda ] && disk=1
done < /proc/partitions
if [ -n "$disk" ]; then
    mount -t devtmpfs dev /dev
    if mount -t ext2 -o ro /dev/vda /mnt; then
        read -r line < /mnt/hello.txt
        echo "disk: $line"
    else
        echo "disk: mount of /dev/vda failed"
    fi
fi
echo "XINTERFACE-INIT-DONE"
# reboot -f asks the kernel to restart at once; with reboot=k on the command line it pulses
# the keyboard controller's reset line (0xfe to port 0x64), with reboot=p it writes the reset
# control register (0xcf9): either ends the VMM's run cleanly ("reset").
exec reboot -f
