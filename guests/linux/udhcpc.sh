#!/bin/sh
# busybox udhcpc's event hook, /etc/udhcpc/default.script in the test initramfs. udhcpc calls
# it with the event as $1 and the lease in the environment (interface, ip, subnet, serverid).
# /init reads /dhcp.lease back with the shell's `.`.
case "$1" in
    deconfig) ifconfig "$interface" 0.0.0.0 up ;;
    bound|renew)
        ifconfig "$interface" "$ip" netmask "$subnet" up
        echo "ip=$ip server=$serverid" > /dhcp.lease ;;
esac
