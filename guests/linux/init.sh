#!/bin/sh
# /init of the xinterface test initramfs (Debian's busybox-static as /bin/busybox).
# Every system call goes through the emulated kernel on kvm_pvm (~0.6 ms each, about a second
# per fork+exec): the marker comes first, and the rest uses shell builtins where it can
# (read, not cat in a $(...) subshell).
echo "XINTERFACE-INIT-OK"
mount -t proc proc /proc
read -r cmdline < /proc/cmdline
echo "cmdline: $cmdline"
# Asked for on the command line: xinterface.write (mount the disk read-write, write a file,
# unmount it so the image is clean), xinterface.hwrng (read 16 bytes of /dev/hwrng),
# xinterface.net (eth0 as 10.0.2.15/24, one ping to 10.0.2.2: the test's TAP),
# xinterface.dhcp=FILE (after the ping: a lease for eth0 from busybox udhcpc, whose hook
# /etc/udhcpc/default.script configures it, then FILE by busybox tftp from the DHCP server),
# xinterface.interrupts (print the virtio lines of /proc/interrupts at the end),
# xinterface.readloop=N (read N 4 KiB blocks of each /dev/vd? with O_DIRECT, one request
# each, between marks; a 1-block read first gives the cost of starting dd).
write=
mode=ro
hwrng=
net=
dhcp=
interrupts=
readloop=
for word in $cmdline; do
    case "$word" in
        xinterface.write) write=1 mode=rw ;;
        xinterface.hwrng) hwrng=1 ;;
        xinterface.net) net=1 ;;
        xinterface.dhcp=*) dhcp=${word#*=} ;;
        xinterface.interrupts) interrupts=1 ;;
        xinterface.readloop=*) readloop=${word#*=} ;;
    esac
done
disk=
disks=
while read -r major minor blocks name; do
    [ "$name" = vda ] && disk=1
    case "$name" in vd[a-z]) disks="$disks $name" ;; esac
done < /proc/partitions
if [ -n "$disk$hwrng" ]; then
    mount -t devtmpfs dev /dev
fi
if [ -n "$disk" ]; then
    if mount -t ext2 -o "$mode" /dev/vda /mnt; then
        read -r line < /mnt/hello.txt
        echo "disk: $line"
        if [ -n "$write" ]; then
            echo "written by the guest" > /mnt/guest.txt && umount /mnt && echo "disk: wrote guest.txt"
        fi
    else
        echo "disk: mount of /dev/vda failed"
    fi
fi
if [ -n "$hwrng" ]; then
    echo "hwrng:$(od -An -tx1 -N16 /dev/hwrng)"
fi
if [ -n "$net" ]; then
    if ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up && ping -c 1 -W 60 10.0.2.2 > /dev/null
    then
        echo "net: 10.0.2.2 answered"
    else
        echo "net: no answer from 10.0.2.2"
    fi
fi
if [ -n "$dhcp" ]; then
    # -f -q -n: in the foreground, exit once bound or once the discovers (-t, -T apart) go
    # unanswered
    if udhcpc -i eth0 -f -q -n -t 10 -T 3 && . /dhcp.lease; then
        echo "dhcp: $ip from $server"
        if tftp -g -r "$dhcp" -l /tftp.txt "$server" && read -r line < /tftp.txt; then
            echo "tftp: $line"
        else
            echo "tftp: no $dhcp from $server"
        fi
    else
        echo "dhcp: no lease"
    fi
fi
if [ -n "$readloop" ]; then
    for name in $disks; do
        echo "readloop: $name one"
        dd if=/dev/$name of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null
        echo "readloop: $name start $readloop"
        dd if=/dev/$name of=/dev/null bs=4096 count="$readloop" iflag=direct 2>/dev/null
        echo "readloop: $name end"
        while read -r major minor dev reads rest; do
            [ "$dev" = "$name" ] && echo "readloop: $name reads $reads"
        done < /proc/diskstats
    done
fi
if [ -n "$interrupts" ]; then
    while read -r line; do
        case "$line" in *virtio*) echo "irq: $line" ;; esac
    done < /proc/interrupts
fi
echo "XINTERFACE-INIT-DONE"
# reboot -f asks the kernel to restart at once; with reboot=k on the command line it pulses
# the keyboard controller's reset line (0xfe to port 0x64), with reboot=p it writes the reset
# control register (0xcf9): either ends the VMM's run cleanly ("reset").
exec reboot -f
