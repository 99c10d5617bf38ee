/*
 * Agent self-test (test build only, KRR_AGENT_SELFTEST): the kernel plays the recorder.
 * The ring lives in kernel memory with a tiny record area, so that it fills often; the
 * "doorbell" parses and checks every record, counts them, and resets head as the
 * recorder would. The QEMU test compares the counts with the kernel's own statistics.
 */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

#define HEADER_SIZE 64
#define CAPACITY 256 /* one user-entry record (208 bytes) fits; user reads split at 224 */
#define FAKE_USER_SRC 0x5000UL
#define SPLIT_LEN 1000

static u64 ring_mem[(HEADER_SIZE + CAPACITY) / 8] __attribute__((aligned(64)));
static u8 split_buf[SPLIT_LEN];

static struct {
	u64 doorbells, full, syscalls, pf_syscalls, interrupts, exceptions, reads, read_bytes;
	u64 split_records, split_bytes, rdtsc, rdrand, rdseed, errors, last_tsc;
} st;

static void error(const char *what, u64 value)
{
	st.errors++;
	kprintf("krr-demo: agent selftest error: %s (%lx)\n", what, value);
}

static void check_entry(const struct krr_rec_user_entry *e)
{
	if (e->h.size != sizeof(*e))
		return error("user entry size", e->h.size);
	if (e->cs != SEL_UCODE || e->ss != SEL_UDATA)
		error("user entry segments", e->cs);
	/* A syscall that arrived as #PF at LSTAR reports the fault's RIP: the kernel stub. */
	int pf_syscall = e->entry_kind == KRR_ENTRY_EXCEPTION && e->vector == 14 && e->error_code == 0x15 &&
			 e->rip == (u64)syscall_entry && e->cr2 == e->rip && !(e->rflags & RFLAGS_IF);
	if (e->gpr[4] >= USER_TOP || (e->rip >= USER_TOP && !pf_syscall))
		error("user entry rsp/rip", e->rip);
	int has_err = e->h.flags & KRR_ENTRY_HAS_ERROR_CODE;
	switch (e->entry_kind) {
	case KRR_ENTRY_SYSCALL:
		st.syscalls++;
		if (e->vector != 0 || has_err || e->rip != e->gpr[1] || e->rflags != e->gpr[11])
			error("syscall entry", e->vector);
		break;
	case KRR_ENTRY_INTERRUPT:
		st.interrupts++;
		if (e->vector != VEC_IRQ0 || has_err || !(e->rflags & RFLAGS_IF))
			error("interrupt entry", e->vector);
		break;
	case KRR_ENTRY_EXCEPTION:
		if (pf_syscall)
			st.pf_syscalls++;
		else
			st.exceptions++;
		if (e->vector >= 32 || (e->vector == 14) != (e->cr2 != 0) || (e->vector == 14 && !has_err) ||
		    (e->vector == 6 && has_err))
			error("exception entry", e->vector);
		break;
	default:
		error("entry kind", e->entry_kind);
	}
}

static void check_read(const struct krr_rec_user_read *r)
{
	u64 padded = (r->len + 7) & ~7UL;
	if (r->len == 0 || r->h.size != sizeof(*r) + padded)
		return error("user read size", r->h.size);
	const u8 *data = (const u8 *)(r + 1);
	for (u64 i = r->len; i < padded; i++)
		if (data[i])
			error("user read padding", i);
	if (r->src >= FAKE_USER_SRC && r->src < FAKE_USER_SRC + SPLIT_LEN) {
		u64 off = r->src - FAKE_USER_SRC;
		if (r->dst != (u64)split_buf + off || off + r->len > SPLIT_LEN || memcmp(data, split_buf + off, r->len))
			error("split read contents", off);
		st.split_records++;
		st.split_bytes += r->len;
		return;
	}
	if (r->src >= USER_TOP || r->dst < KERNEL_VMA)
		error("user read addresses", r->src);
	st.reads++;
	st.read_bytes += r->len;
}

void krr_agent_selftest_doorbell(u32 code)
{
	volatile struct krr_ring_header *h = (volatile struct krr_ring_header *)ring_mem;
	const u8 *area = (const u8 *)ring_mem + HEADER_SIZE;
	st.doorbells++;
	st.full += code == KRR_DOORBELL_FULL;
	u64 head = h->head;
	if (head > CAPACITY || head % 8)
		error("head", head);
	for (u64 off = 0; off < head;) {
		const struct krr_record_header *rh = (const struct krr_record_header *)(area + off);
		if (rh->size < 8 || rh->size % 8 || rh->size > head - off) {
			error("record size", rh->size);
			break;
		}
		switch (rh->kind) {
		case KRR_REC_USER_ENTRY:
			check_entry((const struct krr_rec_user_entry *)rh);
			break;
		case KRR_REC_USER_READ:
			check_read((const struct krr_rec_user_read *)rh);
			break;
		case KRR_REC_RDTSC: {
			u64 v = ((const struct krr_rec_value *)rh)->value;
			if (rh->size != 16 || v < st.last_tsc)
				error("rdtsc record", v);
			st.last_tsc = v;
			st.rdtsc++;
			break;
		}
		case KRR_REC_RDRAND:
		case KRR_REC_RDSEED:
			/* The demo retries until CF is set, so a value without CF is never its last. */
			if (rh->size != 16 || rh->flags & ~KRR_VALUE_CF)
				error("random record", rh->flags);
			if (rh->kind == KRR_REC_RDRAND)
				st.rdrand++;
			else
				st.rdseed++;
			break;
		default:
			error("record kind", rh->kind);
		}
		off += rh->size;
	}
	h->head = 0;
}

void agent_selftest_init(void)
{
	volatile struct krr_ring_header *h = (volatile struct krr_ring_header *)ring_mem;
	h->magic = KRR_RING_MAGIC;
	h->version = KRR_RING_VERSION;
	h->header_size = HEADER_SIZE;
	h->capacity = CAPACITY;
	h->head = 0;
	h->lost = 0;
	krr_agent_init(ring_mem);
	if (!krr_agent_enabled())
		panic("agent selftest: ring rejected");
	/* A read larger than the ring must arrive as several records that add up. */
	for (u32 i = 0; i < SPLIT_LEN; i++)
		split_buf[i] = (u8)(i * 7 + 3);
	krr_agent_user_read(split_buf, (const void *)FAKE_USER_SRC, SPLIT_LEN);
}

void agent_selftest_report(void)
{
	krr_agent_flush();
	volatile struct krr_ring_header *h = (volatile struct krr_ring_header *)ring_mem;
	kprintf("krr-demo: agent selftest: %lu doorbells (%lu full), entries: %lu syscall, %lu syscall-as-#PF, %lu "
		"interrupt, %lu exception; %lu user reads (%lu bytes), split read %lu records (%lu bytes), %lu rdtsc, "
		"%lu rdrand, %lu rdseed, %lu lost, %lu errors\n",
		st.doorbells, st.full, st.syscalls, st.pf_syscalls, st.interrupts, st.exceptions, st.reads, st.read_bytes,
		st.split_records, st.split_bytes, st.rdtsc, st.rdrand, st.rdseed, (u64)h->lost, st.errors);
}
