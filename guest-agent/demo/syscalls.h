/* System call numbers of the demo kernel (shared by the kernel and the user programs). */
#ifndef KRR_DEMO_SYSCALLS_H
#define KRR_DEMO_SYSCALLS_H

#define SYS_WRITE 0     /* write(buf, len) -> len: console output */
#define SYS_READ_DISK 1 /* read_disk(offset, buf, len) -> bytes (at most 16 KiB), 0 at the end */
#define SYS_SLEEP 2     /* sleep(ticks) -> 0; TIMER_HZ ticks a second */
#define SYS_GETPID 3    /* getpid() -> pid */
#define SYS_UPTIME 4    /* uptime() -> microseconds since boot (rdtsc) */
#define SYS_EXIT 5      /* exit(code): does not return */
#define SYS_SPAWN 6     /* spawn(program) -> pid of a child running that program */
#define SYS_WAIT 7      /* wait(pid) -> the child's exit code (128 + vector if killed) */
#define SYS_RANDOM 8    /* random() -> 64 random bits (rdrand, or a generator seeded at boot) */

#endif
