/* Timer: sleep a few times and print the uptime. */
#include "ulib.h"
#include "programs.h"

long clock_main(void)
{
	long last = sys_uptime();
	for (int i = 1; i <= 8; i++) {
		sys_sleep(50);
		long now = sys_uptime();
		printf("sleep %d: uptime %ld us (+%ld us)\n", i, now, now - last);
		last = now;
	}
	return 0;
}
