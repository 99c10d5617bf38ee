/* Computation: count primes by trial division, then the longest Collatz chain. */
#include "ulib.h"
#include "programs.h"

#define LIMIT 2000000
#define STEP 250000

long primes_main(void)
{
	static u32 small[512]; /* primes up to sqrt(LIMIT) */
	u32 nsmall = 0, count = 0;
	for (u32 n = 2; n < LIMIT; n++) {
		int prime = 1;
		for (u32 i = 0; i < nsmall && small[i] * small[i] <= n; i++)
			if (n % small[i] == 0) {
				prime = 0;
				break;
			}
		if (prime) {
			count++;
			if ((u64)n * n < LIMIT && nsmall < 512)
				small[nsmall++] = n;
		}
		if ((n + 1) % STEP == 0)
			printf("primes below %u: %u\n", n + 1, count);
	}
	u32 best = 1, best_len = 1;
	for (u32 start = 1; start < 300000; start++) {
		u64 x = start;
		u32 len = 1;
		while (x != 1) {
			x = (x & 1) ? 3 * x + 1 : x / 2;
			len++;
		}
		if (len > best_len) {
			best_len = len;
			best = start;
		}
	}
	printf("collatz: longest chain below 300000 starts at %u (%u steps)\n", best, best_len);
	return 0;
}
