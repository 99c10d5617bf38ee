#!/bin/sh
# The second workload of krr-tui's Linux guest (/init runs it with krr.workload=stress
# on the command line): the cases of user space that are hard for replay, each printing
# what it saw, so the replayed console shows each was replayed as recorded.
echo "stress: start, pid $$"

# execve with long arguments and a long environment variable: strnlen_user and
# copy_strings read them from the old program's memory.
big=$(seq -s , 1 4000)
n=$(env BIG="$big" sh -c 'echo "$# arguments, BIG of ${#BIG} bytes"' sh $(seq 1 500))
echo "stress: exec with $n"

# fork with copy-on-write of dirty anonymous memory: the subshell changes its copy of
# a large variable, the parent's stays as it was.
v=$(seq -s ' ' 1 5000)
child=$( v="${v} child"; echo "${#v}" )
echo "stress: copy-on-write: child saw ${child} bytes, parent keeps ${#v}"

# /proc/self/cmdline: the kernel reads the process's own argument area.
echo "stress: /proc/self/cmdline: $(tr '\0' ' ' < /proc/self/cmdline)"

# /proc/<pid>/environ of another process: read from that process's memory.
# (It sleeps until killed: guest time runs at the host's pace while the guest runs slower.)
KRR_MARK=environ-of-another-process sleep 1000 &
pid=$!
echo "stress: /proc/$pid/environ: $(tr '\0' '\n' < /proc/$pid/environ | grep KRR_MARK)"
echo "stress: /proc/$pid/cmdline: $(tr '\0' ' ' < /proc/$pid/cmdline)"
kill $pid
wait $pid

# A pipe between two processes.
echo "stress: pipe: $(seq 1 20000 | md5sum | cut -d' ' -f1), $(seq 1 20000 | wc -l) lines"

# Many small system calls with user buffers: xargs builds argument lists from a pipe.
echo "stress: xargs: $(seq 1 300 | xargs -n 7 echo | wc -l) lines"
# A file written through a shared mapping and read back with read(2): the kernel knows
# of the writes from the page tables' dirty bits alone.
mmap-check

echo "stress: done"
