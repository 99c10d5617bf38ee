/*
 * Memory: physical frame pools, the kernel page tables, per-process user address spaces
 * with demand paging, and the only ways the kernel touches user memory (copy_*_user).
 *
 * User page tables are written, never read: the MMU sets accessed/dirty bits in them while
 * user code runs natively, outside replay. Every user table page therefore has a shadow
 * page right after it (the pair is one 8 KiB allocation) holding the values the kernel
 * wrote; lookups and teardown read the shadow, and entries are written whole.
 */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

#define PTE_P 0x1UL
#define PTE_W 0x2UL
#define PTE_U 0x4UL
#define PTE_PS 0x80UL
#define PTE_ADDR 0x000ffffffffff000UL

static u64 kpml4[512] __attribute__((aligned(4096)));
static u64 kpdpt[512] __attribute__((aligned(4096)));
static u64 kpd_ram[512] __attribute__((aligned(4096)));
static u64 kpd_ring[512] __attribute__((aligned(4096)));
static u64 kernel_top_entry; /* PML4[511], shared by every address space */

struct pool {
	u64 next, end, unit;
	u32 *free; /* stack of freed frame numbers */
	u32 nfree;
};

static u32 pt_free[(PT_POOL_END - PT_POOL_START) / 8192];
static u32 page_free_frames[(PAGE_POOL_END - PAGE_POOL_START) / 4096];
static struct pool pt_pool = {PT_POOL_START, PT_POOL_END, 8192, pt_free, 0};
static struct pool page_pool = {PAGE_POOL_START, PAGE_POOL_END, 4096, page_free_frames, 0};

static u64 pool_alloc(struct pool *p)
{
	u64 phys;
	if (p->nfree)
		phys = (u64)p->free[--p->nfree] << 12;
	else if (p->next < p->end) {
		phys = p->next;
		p->next += p->unit;
	} else
		return 0;
	memset(P2V(phys), 0, p->unit);
	return phys;
}

static void pool_free(struct pool *p, u64 phys) { p->free[p->nfree++] = (u32)(phys >> 12); }

u64 page_alloc(void) { return pool_alloc(&page_pool); }
void page_free(u64 phys) { pool_free(&page_pool, phys); }

void mm_init(void)
{
	for (u64 i = 0; i < 512; i++)
		kpd_ram[i] = i << 21 | PTE_P | PTE_W | PTE_PS;
	kpd_ring[0] = KRR_RING_GPA | PTE_P | PTE_W | PTE_PS;
	kpdpt[510] = V2P(kpd_ram) | PTE_P | PTE_W;
	kpdpt[511] = V2P(kpd_ring) | PTE_P | PTE_W;
	kernel_top_entry = V2P(kpdpt) | PTE_P | PTE_W;
	kpml4[511] = kernel_top_entry;
	kernel_aspace_activate();
}

void kernel_aspace_activate(void) { write_cr3(V2P(kpml4)); }
void aspace_activate(u64 pml4) { write_cr3(pml4); }

static u64 *shadow(u64 table) { return P2V(table + 4096); }

static void set_entry(u64 table, u32 index, u64 value)
{
	shadow(table)[index] = value;
	((volatile u64 *)P2V(table))[index] = value;
}

u64 aspace_create(void)
{
	u64 pml4 = pool_alloc(&pt_pool);
	if (pml4)
		((volatile u64 *)P2V(pml4))[511] = kernel_top_entry;
	return pml4;
}

/* The page table (level 1) covering va, created on the way if asked. */
static u64 walk(u64 pml4, u64 va, int create)
{
	u64 table = pml4;
	for (int shift = 39; shift > 12; shift -= 9) {
		u32 index = (va >> shift) & 511;
		u64 e = shadow(table)[index];
		if (!e) {
			if (!create)
				return 0;
			u64 next = pool_alloc(&pt_pool);
			if (!next)
				return 0;
			e = next | PTE_P | PTE_W | PTE_U;
			set_entry(table, index, e);
		}
		table = e & PTE_ADDR;
	}
	return table;
}

static u64 lookup(u64 pml4, u64 va)
{
	u64 pt = walk(pml4, va, 0);
	return pt ? shadow(pt)[(va >> 12) & 511] : 0;
}

static void free_level(u64 table, int level)
{
	u32 n = level == 3 ? 256 : 512; /* the upper half of a PML4 is the kernel's */
	for (u32 i = 0; i < n; i++) {
		u64 e = shadow(table)[i];
		if (!e)
			continue;
		if (level == 0)
			pool_free(&page_pool, e & PTE_ADDR);
		else
			free_level(e & PTE_ADDR, level - 1);
	}
	pool_free(&pt_pool, table);
}

void aspace_destroy(u64 pml4) { free_level(pml4, 3); }

/*
 * Resolve a not-present user fault at addr: program pages are copied from the user image,
 * heap and stack pages are fresh zero pages. Returns 0 when mapped, <0 for a bad address.
 */
int user_fault(u64 pml4, u64 addr)
{
	u64 page = addr & PAGE_MASK;
	u64 image_size = (u64)(user_image_end - user_image_start);
	int from_image = page >= USER_IMAGE_BASE && page < USER_IMAGE_BASE + image_size;
	int zero_page = (page >= USER_HEAP_BASE && page < USER_HEAP_BASE + USER_HEAP_SIZE) ||
			(page >= USER_STACK_TOP - USER_STACK_SIZE && page < USER_STACK_TOP);
	if (!from_image && !zero_page)
		return -1;
	if (lookup(pml4, page))
		return -1; /* present: a protection fault */
	u64 frame = pool_alloc(&page_pool);
	if (!frame)
		return -2;
	if (from_image) {
		u64 off = page - USER_IMAGE_BASE;
		u64 n = image_size - off < PAGE_SIZE ? image_size - off : PAGE_SIZE;
		memcpy(P2V(frame), user_image_start + off, n);
	}
	u64 pt = walk(pml4, page, 1);
	if (!pt) {
		pool_free(&page_pool, frame);
		return -2;
	}
	set_entry(pt, (page >> 12) & 511, frame | PTE_P | PTE_W | PTE_U);
	invlpg(page);
	return 0;
}

/* Validate [addr, addr+len) as user memory of the current process, mapping pages on demand. */
static int user_range(u64 addr, usize len)
{
	if (len == 0)
		return 0;
	if (addr >= USER_TOP || len > USER_TOP - addr)
		return -1;
	u64 pml4 = proc_pml4();
	for (u64 page = addr & PAGE_MASK; page <= ((addr + len - 1) & PAGE_MASK); page += PAGE_SIZE)
		if (!lookup(pml4, page) && user_fault(pml4, page))
			return -1;
	return 0;
}

int copy_from_user(void *dst, u64 src, usize len)
{
	if (user_range(src, len))
		return -1;
	memcpy(dst, (const void *)src, len);
	krr_agent_user_read(dst, (const void *)src, len);
	return 0;
}

int copy_to_user(u64 dst, const void *src, usize len)
{
	if (user_range(dst, len))
		return -1;
	memcpy((void *)dst, src, len);
	return 0;
}
