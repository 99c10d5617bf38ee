/* Disk: read the whole disk in chunks into a heap buffer, print its FNV-1a 64 checksum. */
#include "ulib.h"
#include "programs.h"

#define CHUNK 16384

long disk_main(void)
{
	u8 *buf = heap_alloc(CHUNK);
	u64 hash = 0xcbf29ce484222325UL, total = 0;
	u32 chunks = 0;
	long t0 = sys_uptime();
	for (;;) {
		long n = sys_read_disk(total, buf, CHUNK);
		if (n < 0) {
			printf("read_disk failed at offset %lu: %ld\n", total, n);
			return 1;
		}
		if (n == 0)
			break;
		for (long i = 0; i < n; i++) {
			hash ^= buf[i];
			hash *= 0x100000001b3UL;
		}
		total += (u64)n;
		chunks++;
	}
	long t1 = sys_uptime();
	printf("read %lu bytes in %u chunks in %ld us\n", total, chunks, t1 - t0);
	printf("fnv1a64 %016lx\n", hash);
	return 0;
}
