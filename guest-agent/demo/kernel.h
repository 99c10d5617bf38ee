/* Demo kernel: types, hardware helpers and the interfaces between its files. */
#ifndef KRR_DEMO_KERNEL_H
#define KRR_DEMO_KERNEL_H

#include "layout.h"
#include <stdarg.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long usize;

#define NULL ((void *)0)
#define PAGE_SIZE 4096UL
#define PAGE_MASK (~(PAGE_SIZE - 1))
#define P2V(p) ((void *)((u64)(p) + KERNEL_VMA))
#define V2P(v) ((u64)(v) - KERNEL_VMA)
#define barrier() __asm__ volatile("" ::: "memory")
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The frame every kernel entry builds on the kernel stack (entry.S). */
struct trapframe {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss; /* as pushed by the CPU */
};

#define RFLAGS_IF 0x200UL

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline void cpuid(u32 leaf, u32 subleaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}
static inline u64 read_cr2(void)
{
	u64 v;
	__asm__ volatile("mov %%cr2, %0" : "=r"(v));
	return v;
}
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory"); }
static inline void invlpg(u64 va) { __asm__ volatile("invlpg (%0)" ::"r"(va) : "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* `sti; hlt` back to back: an interrupt pending at the sti wakes the hlt. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }

#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_FMASK 0xc0000084
#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define MSR_KERNEL_GS_BASE 0xc0000102

/* lib.c */
void *memset(void *dst, int c, usize n);
void *memcpy(void *dst, const void *src, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
int vformat(char *buf, usize cap, const char *fmt, va_list ap);

/* uart.c */
void uart_init(void);
void uart_write(const char *s, usize n);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void panic(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void power_off(u8 code) __attribute__((noreturn));

/* arch.c */
void arch_init(void);
void tss_set_rsp0(u64 rsp0);
extern u64 cpu_kstack_top; /* read by the syscall stub */
void idt_load_empty(void);

/* entry.S */
void syscall_entry(void);
void proc_first_return(void);
void swtch(u64 *save_sp, u64 new_sp);
void gdt_reload_segments(void);
extern const u64 isr_table[48];

/* mm.c */
void mm_init(void);
u64 page_alloc(void);
void page_free(u64 phys);
u64 aspace_create(void);
void aspace_destroy(u64 pml4);
void aspace_activate(u64 pml4);
void kernel_aspace_activate(void);
int user_fault(u64 pml4, u64 addr);
int copy_from_user(void *dst, u64 src, usize len);
int copy_to_user(u64 dst, const void *src, usize len);
extern const u8 user_image_start[], user_image_end[];

/* pic_pit.c */
void pic_init(void);
void pic_eoi(u32 vector);
/* Called for an interrupt line other than the timer's, before its EOI (weak: nothing). */
void irq_hook(u32 vector);
int pic_spurious(u32 vector);
void pit_init(u32 hz);

/* fwcfg.c */
int disk_init(void);
u64 disk_size(void);
i64 disk_read(u64 offset, void *buf, u64 len);

/* sched.c */
struct proc;
extern volatile u64 ticks;
extern struct proc *cur;
void sched_timer_tick(void);
int proc_spawn(u32 prog, struct proc *parent);
void scheduler(void);
void proc_yield(void);
void proc_sleep(u64 nticks);
void proc_exit(i64 code) __attribute__((noreturn));
i64 proc_wait(int pid);
int proc_pid(void);
u64 proc_pml4(void);
const char *proc_name(void);

/* syscall.c */
void syscall_dispatch(struct trapframe *tf);
void time_init(void);

/* random.c */
void random_init(void);
u64 random_u64(void);

/* trap.c */
void trap(struct trapframe *tf);
extern u64 stat_syscalls_fault, stat_syscalls_arch, stat_user_irqs, stat_demand_faults;

/* Programs built into the user image (user/programs.h has the same numbers). */
#define PROG_PRIMES 0
#define PROG_DISK 1
#define PROG_CLOCK 2
#define PROG_PAGER 3
#define PROG_CRASH_UD 4
#define PROG_CRASH_PF 5
#define NPROGS 6

#endif
