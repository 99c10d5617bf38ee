/*
 * Faults: fresh heap pages mapped on first touch, in an order that differs from run to
 * run (SYS_RANDOM), then two children killed by fatal faults.
 */
#include "ulib.h"
#include "programs.h"

#define PAGES 64

long pager_main(void)
{
	u8 *heap = heap_alloc(PAGES * PAGE_SIZE);
	/* An odd stride modulo a power of two visits every page once. */
	u64 r = sys_random();
	u32 start = (u32)r % PAGES, stride = (u32)(r >> 32) % PAGES | 1;
	for (u32 n = 0; n < PAGES; n++) {
		u32 i = (start + n * stride) % PAGES;
		heap[i * PAGE_SIZE + (i * 64) % PAGE_SIZE] = (u8)(i + 1);
	}
	u64 sum = 0;
	for (u32 i = 0; i < PAGES; i++)
		sum += heap[i * PAGE_SIZE + (i * 64) % PAGE_SIZE];
	printf("touched %u fresh heap pages, sum %lu\n", PAGES, sum);
	static const int children[] = {PROG_CRASH_UD, PROG_CRASH_PF};
	for (u32 i = 0; i < 2; i++) {
		long pid = sys_spawn(children[i]);
		long code = sys_wait(pid);
		printf("child %ld exited with code %ld\n", pid, code);
	}
	return 0;
}

long crash_ud_main(void)
{
	printf("executing ud2\n");
	__asm__ volatile("ud2");
	return 0;
}

long crash_pf_main(void)
{
	printf("writing to unmapped address 0xdead0000\n");
	*(volatile u32 *)0xdead0000UL = 1;
	return 0;
}
