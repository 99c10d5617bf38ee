#!/bin/sh
# /init of krr-tui's Linux guest (busybox ash): a short workload over the kernel's
# main paths (mounts, /proc, page cache and tmpfs writes, fork and exec, pipes), then
# power-off. With krr.boot_only on the command line the kernel powers off before it.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "init: $(uname -sr) $(uname -m), pid $$"
echo "init: cmdline: $(cat /proc/cmdline)"
# krr.workload=stress: the second workload (stress.sh) instead of this one;
# krr.workload=none: power-off here (the tests that record with a hook off need only
# the start of user space: the first programs' system calls, faults and cpuid).
case " $(cat /proc/cmdline) " in
*" krr.workload=stress "*)
	sh /stress.sh
	poweroff -f
	;;
*" krr.workload=none "*)
	echo "init: krr.workload=none: powering off"
	poweroff -f
	;;
esac
echo "init: uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "init: /proc/interrupts:"
cat /proc/interrupts
# 8 x 1 MiB written through the page cache into the root tmpfs.
i=0
while [ $i -lt 8 ]; do
	dd if=/dev/zero of=/tmp/blob bs=4096 count=256 2>/dev/null
	i=$((i + 1))
done
echo "init: /tmp/blob: md5 $(md5sum /tmp/blob | cut -d' ' -f1), $(stat -c %s /tmp/blob) bytes"
echo "init: a child shell's pid: $(sh -c 'echo $$')"
echo "init: $(ls /dev | wc -l) entries in /dev"
echo "init: uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "init: done, powering off"
poweroff -f
