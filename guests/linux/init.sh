#!/bin/sh
# /init of the xinterface test initramfs (Debian's busybox-static as /bin/busybox).
# Every system call goes through the emulated kernel on kvm_pvm (~0.6 ms each, ~1 s per
# fork+exec): keep this to a handful of commands, and builtins where possible.
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "XINTERFACE-INIT-OK"
echo "cmdline: $(cat /proc/cmdline)"
if [ -b /dev/vda ]; then
    if mount -t ext2 -o ro /dev/vda /mnt; then
        echo "disk: $(cat /mnt/hello.txt)"
    else
        echo "disk: mount of /dev/vda failed"
    fi
fi
echo "XINTERFACE-INIT-DONE"
# With reboot=k on the command line this is the keyboard controller's reset pulse
# (0xfe to port 0x64), which ends the VMM's run cleanly ("reset").
reboot -f
