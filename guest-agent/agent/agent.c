/*
 * The guest agent: appends records to the ring the recorder shares at KRR_RING_GPA.
 *
 * Kernel code calls the hooks with interrupts disabled (the demo kernel never enables
 * them outside its idle loop), so a record is never interleaved with another.
 * The same code runs in replay, so every value read from the ring header must come from
 * the recorder's deterministic writes (done only at doorbell exits) or from this code.
 */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

#define HOOK __attribute__((noinline, used))

#ifdef KRR_AGENT_SELFTEST
/* Test build: the kernel itself consumes the ring (demo/agent_selftest.c). */
void krr_agent_selftest_doorbell(u32 code);
#define DOORBELL(code) krr_agent_selftest_doorbell(code)
#else
#define DOORBELL(code) outl(KRR_PORT_DOORBELL, code)
#endif

typedef u64 __attribute__((may_alias, aligned(1))) unaligned_u64;

static volatile struct krr_ring_header *ring; /* NULL: agent disabled */
static volatile u8 *area;
static u64 capacity;

void krr_agent_init(void *ring_va)
{
	volatile struct krr_ring_header *h = ring_va;
	ring = NULL;
	if (h->magic != KRR_RING_MAGIC || h->version != KRR_RING_VERSION)
		return;
	u64 hs = h->header_size, cap = h->capacity;
	if (hs < sizeof(struct krr_ring_header) || hs % KRR_RECORD_ALIGN || hs > KRR_RING_REGION_SIZE)
		return;
	/* The largest fixed-size record must fit in an empty ring. */
	if (cap > KRR_RING_REGION_SIZE - hs || cap < sizeof(struct krr_rec_user_entry) + KRR_RECORD_ALIGN)
		return;
	capacity = cap & ~(u64)(KRR_RECORD_ALIGN - 1);
	area = (volatile u8 *)ring_va + hs;
	ring = h;
}

int krr_agent_enabled(void) { return ring != NULL; }

static int fits(u64 head, u64 size) { return head <= capacity && head % KRR_RECORD_ALIGN == 0 && capacity - head >= size; }

/* Space for a record of `size` bytes; rings the doorbell when the ring is full. */
static volatile u8 *reserve(u64 size, u64 *head_out)
{
	u64 head = ring->head;
	if (!fits(head, size)) {
		DOORBELL(KRR_DOORBELL_FULL);
		head = ring->head; /* the recorder consumed the ring and reset head */
		if (!fits(head, size)) {
			ring->lost = ring->lost + 1;
			return NULL;
		}
	}
	*head_out = head;
	return area + head;
}

static void commit(u64 head, u64 size)
{
	barrier();
	ring->head = head + size;
}

static void put_words(volatile u8 *to, const u64 *from, usize words)
{
	volatile u64 *t = (volatile u64 *)to;
	for (usize i = 0; i < words; i++)
		t[i] = from[i];
}

static u64 rec_header(u16 kind, u16 flags, u32 size) { return (u64)kind | (u64)flags << 16 | (u64)size << 32; }

HOOK void krr_agent_user_entry(unsigned int entry_kind, const struct trapframe *tf, unsigned long cr2)
{
	if (!ring)
		return;
	u64 rec[sizeof(struct krr_rec_user_entry) / 8];
	/* Exceptions that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX. */
	const u32 err_vectors = 1u << 8 | 1u << 10 | 1u << 11 | 1u << 12 | 1u << 13 | 1u << 14 | 1u << 17 | 1u << 21 |
				1u << 29 | 1u << 30;
	u32 has_err = entry_kind == KRR_ENTRY_EXCEPTION && tf->vector < 32 && (err_vectors >> tf->vector & 1);
	rec[0] = rec_header(KRR_REC_USER_ENTRY, has_err ? KRR_ENTRY_HAS_ERROR_CODE : 0, sizeof(rec));
	u32 vector = entry_kind == KRR_ENTRY_SYSCALL ? 0 : (u32)tf->vector;
	rec[1] = (u64)entry_kind | (u64)vector << 32;
	rec[2] = (u64)(u32)tf->error; /* error_code, reserved */
	rec[3] = cr2;
	u64 *gpr = &rec[4]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
	gpr[0] = tf->rax;
	gpr[1] = tf->rcx;
	gpr[2] = tf->rdx;
	gpr[3] = tf->rbx;
	gpr[4] = tf->rsp;
	gpr[5] = tf->rbp;
	gpr[6] = tf->rsi;
	gpr[7] = tf->rdi;
	gpr[8] = tf->r8;
	gpr[9] = tf->r9;
	gpr[10] = tf->r10;
	gpr[11] = tf->r11;
	gpr[12] = tf->r12;
	gpr[13] = tf->r13;
	gpr[14] = tf->r14;
	gpr[15] = tf->r15;
	rec[20] = tf->rip;
	rec[21] = tf->rflags;
	rec[22] = tf->cs;
	rec[23] = tf->ss;
	/* The demo kernel never runs swapgs: both MSRs hold the user's values here. */
	rec[24] = rdmsr(MSR_FS_BASE);
	rec[25] = rdmsr(MSR_GS_BASE);
	u64 head;
	volatile u8 *slot = reserve(sizeof(rec), &head);
	if (!slot)
		return;
	put_words(slot, rec, ARRAY_SIZE(rec));
	commit(head, sizeof(rec));
}

HOOK void krr_agent_user_read(void *dst, const void *src, unsigned long len)
{
	if (!ring)
		return;
	const u64 fixed = sizeof(struct krr_rec_user_read);
	const u64 max_chunk = (capacity - fixed) & ~(u64)(KRR_RECORD_ALIGN - 1);
	u64 done = 0;
	while (done < len) {
		u64 n = len - done;
		if (n > max_chunk)
			n = max_chunk;
		u64 size = fixed + ((n + 7) & ~7UL);
		u64 head;
		volatile u8 *slot = reserve(size, &head);
		if (!slot)
			return;
		u64 hdr[4] = {
			rec_header(KRR_REC_USER_READ, 0, (u32)size),
			(u64)dst + done,
			(u64)src + done,
			n,
		};
		put_words(slot, hdr, 4);
		const u8 *from = (const u8 *)dst + done;
		volatile u64 *to = (volatile u64 *)(slot + fixed);
		u64 words = n / 8;
		for (u64 i = 0; i < words; i++)
			to[i] = *(const unaligned_u64 *)(from + i * 8);
		if (n % 8) {
			u64 last = 0;
			for (u64 i = 0; i < n % 8; i++)
				last |= (u64)from[words * 8 + i] << (8 * i);
			to[words] = last;
		}
		commit(head, size);
		done += n;
	}
}

/* A value the kernel took from rdtsc, rdrand or rdseed; flags holds KRR_VALUE_CF. */
static void record_value(u16 kind, u16 flags, u64 value)
{
	if (!ring)
		return;
	u64 rec[2] = {rec_header(kind, flags, sizeof(rec)), value};
	u64 head;
	volatile u8 *slot = reserve(sizeof(rec), &head);
	if (slot) {
		put_words(slot, rec, 2);
		commit(head, sizeof(rec));
	}
}

HOOK unsigned long krr_agent_rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	u64 value = (u64)hi << 32 | lo;
	record_value(KRR_REC_RDTSC, 0, value);
	return value;
}

/* One rdrand or rdseed, recorded whether or not it delivered a value (CF). */
#define RANDOM_HOOK(name, insn, kind)                                                    \
	HOOK int name(unsigned long *value)                                               \
	{                                                                                 \
		u64 v;                                                                    \
		u8 ok;                                                                    \
		__asm__ volatile(insn " %0; setc %1" : "=r"(v), "=qm"(ok) : : "cc");     \
		record_value(kind, ok ? KRR_VALUE_CF : 0, v);                             \
		*value = v;                                                               \
		return ok;                                                                \
	}
RANDOM_HOOK(krr_agent_rdrand, "rdrand", KRR_REC_RDRAND)
RANDOM_HOOK(krr_agent_rdseed, "rdseed", KRR_REC_RDSEED)

void krr_agent_flush(void)
{
	if (ring)
		DOORBELL(KRR_DOORBELL_FLUSH);
}
