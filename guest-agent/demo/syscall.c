/* System calls: number in RAX, arguments in RDI RSI RDX, result in RAX (negative: error). */
#include "kernel.h"
#include "krr_agent.h"
#include "syscalls.h"

#define EFAULT 14
#define EINVAL 22
#define ENOSYS 38

static u8 disk_buf[16384] __attribute__((aligned(4096)));
static u64 boot_tsc, tsc_khz;

/* Measure the TSC against 10 PIT ticks (the only kernel-mode interrupts of the boot). */
void time_init(void)
{
	u64 start = ticks;
	while (ticks == start) {
		sti_hlt();
		cli();
	}
	u64 t0 = krr_agent_rdtsc();
	start = ticks;
	while (ticks < start + 10) {
		sti_hlt();
		cli();
	}
	u64 t1 = krr_agent_rdtsc();
	boot_tsc = t0;
	tsc_khz = (t1 - t0) / (10 * 1000 / TIMER_HZ);
	kprintf("krr-demo: tsc %lu kHz\n", tsc_khz);
}

static i64 sys_write(u64 buf, u64 len)
{
	char kbuf[256];
	if (len > 4096)
		len = 4096;
	for (u64 done = 0; done < len;) {
		u64 n = len - done < sizeof(kbuf) ? len - done : sizeof(kbuf);
		if (copy_from_user(kbuf, buf + done, n))
			return -EFAULT;
		uart_write(kbuf, n);
		done += n;
	}
	return (i64)len;
}

static i64 sys_read_disk(u64 offset, u64 buf, u64 len)
{
	if (len > sizeof(disk_buf))
		len = sizeof(disk_buf);
	i64 n = disk_read(offset, disk_buf, len);
	if (n < 0)
		return -EINVAL;
	if (copy_to_user(buf, disk_buf, (usize)n))
		return -EFAULT;
	return n;
}

static i64 sys_uptime(void)
{
	u64 now = krr_agent_rdtsc();
	if (!tsc_khz)
		return (i64)(ticks * (1000000 / TIMER_HZ));
	return (i64)((now - boot_tsc) * 1000 / tsc_khz); /* microseconds */
}

void syscall_dispatch(struct trapframe *tf)
{
	u64 a0 = tf->rdi, a1 = tf->rsi, a2 = tf->rdx;
	i64 ret;
	switch (tf->rax) {
	case SYS_WRITE:
		ret = sys_write(a0, a1);
		break;
	case SYS_READ_DISK:
		ret = sys_read_disk(a0, a1, a2);
		break;
	case SYS_SLEEP:
		proc_sleep(a0 > 10000 ? 10000 : a0);
		ret = 0;
		break;
	case SYS_GETPID:
		ret = proc_pid();
		break;
	case SYS_UPTIME:
		ret = sys_uptime();
		break;
	case SYS_EXIT:
		proc_exit((i64)a0);
	case SYS_SPAWN:
		ret = proc_spawn((u32)(a0 < NPROGS ? a0 : NPROGS), cur);
		break;
	case SYS_WAIT:
		ret = proc_wait((int)a0);
		break;
	case SYS_RANDOM:
		ret = (i64)random_u64();
		break;
	default:
		ret = -ENOSYS;
	}
	tf->rax = (u64)ret;
}
