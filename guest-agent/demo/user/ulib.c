#include "ulib.h"
#include "programs.h"

static const char *prog_name = "?";
static long my_pid;
static u64 heap_next = USER_HEAP_BASE;

void printf(const char *fmt, ...)
{
	char buf[256];
	int n = 0;
	const char *p = prog_name;
	buf[n++] = '[';
	while (*p && n < 40)
		buf[n++] = *p++;
	buf[n++] = ':';
	char digits[20];
	int d = 0;
	long v = my_pid;
	do {
		digits[d++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (d)
		buf[n++] = digits[--d];
	buf[n++] = ']';
	buf[n++] = ' ';
	va_list ap;
	va_start(ap, fmt);
	int m = vformat(buf + n, sizeof(buf) - (usize)n, fmt, ap);
	va_end(ap);
	if (m > (int)sizeof(buf) - n - 1)
		m = (int)sizeof(buf) - n - 1;
	sys_write(buf, (usize)(n + m));
}

/* Bump allocation in the heap region: pages appear on first touch (demand paging). */
void *heap_alloc(usize n)
{
	void *p = (void *)heap_next;
	heap_next += (n + 15) & ~15UL;
	return p;
}

long user_main(long prog, long pid)
{
	static const char *const names[] = {"primes", "disk", "clock", "pager", "crash-ud", "crash-pf"};
	static long (*const mains[])(void) = {primes_main, disk_main, clock_main, pager_main, crash_ud_main, crash_pf_main};
	my_pid = pid;
	if (prog < 0 || prog >= (long)(sizeof(mains) / sizeof(mains[0])))
		return 127;
	prog_name = names[prog];
	return mains[prog]();
}
