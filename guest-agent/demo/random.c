/*
 * Random numbers for user programs (SYS_RANDOM): rdrand where CPUID advertises it,
 * else a xorshift generator seeded by rdseed or, without it, the TSC. Every rdrand,
 * rdseed and rdtsc goes through the agent, which records its value for replay.
 */
#include "kernel.h"
#include "krr_agent.h"

#define CPUID_1_ECX_RDRAND (1u << 30)
#define CPUID_7_EBX_RDSEED (1u << 18)
/* Intel's advice for rdrand: retry a few times before giving up on it. */
#define RANDOM_RETRIES 10

static int has_rdrand;
static u64 xorshift_state;

void random_init(void)
{
	u32 max_leaf, b, c, d, a;
	cpuid(0, 0, &max_leaf, &b, &c, &d);
	cpuid(1, 0, &a, &b, &c, &d);
	has_rdrand = (c & CPUID_1_ECX_RDRAND) != 0;
	int has_rdseed = 0;
	if (max_leaf >= 7) {
		cpuid(7, 0, &a, &b, &c, &d);
		has_rdseed = (b & CPUID_7_EBX_RDSEED) != 0;
	}
	unsigned long seed = 0;
	int seeded = 0;
	for (int i = 0; has_rdseed && !seeded && i < RANDOM_RETRIES; i++)
		seeded = krr_agent_rdseed(&seed);
	if (!seeded)
		seed = krr_agent_rdtsc();
	xorshift_state = seed | 1;
	kprintf("krr-demo: random numbers from %s, seed from %s\n", has_rdrand ? "rdrand" : "xorshift",
		seeded ? "rdseed" : "the TSC");
}

u64 random_u64(void)
{
	unsigned long v;
	for (int i = 0; has_rdrand && i < RANDOM_RETRIES; i++)
		if (krr_agent_rdrand(&v))
			return v;
	u64 x = xorshift_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	xorshift_state = x;
	return x;
}
