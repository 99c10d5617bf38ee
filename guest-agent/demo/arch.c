/* CPU tables: GDT (Linux layout), TSS, IDT, and the syscall MSRs. */
#include "kernel.h"

struct tss {
	u32 reserved0;
	u64 rsp[3];
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
} __attribute__((packed));

struct idt_gate {
	u16 offset_lo;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 offset_mid;
	u32 offset_hi;
	u32 reserved;
} __attribute__((packed));

struct table_ptr {
	u16 limit;
	u64 base;
} __attribute__((packed));

static u64 gdt[7] __attribute__((aligned(16)));
static struct tss tss __attribute__((aligned(16)));
static struct idt_gate idt[256] __attribute__((aligned(16)));
static u8 double_fault_stack[4096] __attribute__((aligned(16)));

/* Kernel stack of the current process; the syscall stub switches to it. */
u64 cpu_kstack_top;

static void set_gate(u32 vector, u64 handler, u8 ist)
{
	struct idt_gate *g = &idt[vector];
	g->offset_lo = (u16)handler;
	g->selector = SEL_KCODE;
	g->ist = ist;
	g->type_attr = 0x8e; /* present, DPL0, 64-bit interrupt gate: IF cleared on entry */
	g->offset_mid = (u16)(handler >> 16);
	g->offset_hi = (u32)(handler >> 32);
	g->reserved = 0;
}

void tss_set_rsp0(u64 rsp0)
{
	tss.rsp[0] = rsp0;
	cpu_kstack_top = rsp0;
}

void arch_init(void)
{
	u64 base = (u64)&tss, limit = sizeof(tss) - 1;
	gdt[0] = 0;
	gdt[1] = 0x00af9a000000ffffUL; /* 0x08 kernel code64 */
	gdt[2] = 0x00cf92000000ffffUL; /* 0x10 kernel data */
	gdt[3] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89UL << 40 | ((limit >> 16) & 0xf) << 48 |
		 ((base >> 24) & 0xff) << 56; /* 0x18 TSS, available */
	gdt[4] = base >> 32;
	gdt[5] = 0x00cff2000000ffffUL; /* 0x28 user data, DPL3 */
	gdt[6] = 0x00affa000000ffffUL; /* 0x30 user code64, DPL3 */

	/* The I/O bitmap base lies past the limit: no port access from ring 3. */
	tss.iomap_base = sizeof(tss);
	tss.ist[0] = (u64)double_fault_stack + sizeof(double_fault_stack);

	struct table_ptr gp = {sizeof(gdt) - 1, (u64)gdt};
	__asm__ volatile("lgdt %0" ::"m"(gp) : "memory");
	gdt_reload_segments();
	__asm__ volatile("ltr %w0" ::"r"(SEL_TSS));

	for (u32 v = 0; v < ARRAY_SIZE(isr_table); v++)
		set_gate(v, isr_table[v], v == 8 ? 1 : 0);
	struct table_ptr ip = {sizeof(idt) - 1, (u64)idt};
	__asm__ volatile("lidt %0" ::"m"(ip) : "memory");

	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | 1 /* SCE */ | 1UL << 11 /* NXE */);
	wrmsr(MSR_STAR, (u64)(SEL_UDATA - 8) << 48 | (u64)SEL_KCODE << 32);
	wrmsr(MSR_LSTAR, (u64)syscall_entry);
	wrmsr(MSR_CSTAR, (u64)syscall_entry);
	wrmsr(MSR_FMASK, 0x47700); /* AC NT IOPL DF IF TF */
	wrmsr(MSR_FS_BASE, 0);
	wrmsr(MSR_GS_BASE, 0);
	wrmsr(MSR_KERNEL_GS_BASE, 0);
}

void idt_load_empty(void)
{
	struct table_ptr ip = {0, 0};
	__asm__ volatile("lidt %0" ::"m"(ip) : "memory");
}
