/*
 * Demo kernel memory map and constants shared by C and assembly.
 *
 * Virtual: the kernel is linked at KERNEL_VMA + 1 MiB; KERNEL_VMA + [0, 1 GiB) maps physical
 * [0, 1 GiB) with 2 MiB pages (the kernel's view of all RAM), RING_VA maps the agent ring.
 * User processes own PML4 entries 0..255; entry 511 (the kernel) is shared.
 */
#ifndef KRR_DEMO_LAYOUT_H
#define KRR_DEMO_LAYOUT_H

#ifdef __ASSEMBLER__
#define UL(x) x
#else
#define UL(x) x##UL
#endif

#define KERNEL_VMA UL(0xffffffff80000000)
#define KERNEL_PHYS UL(0x100000)
#define RING_VA UL(0xffffffffc0000000)

/* Physical frame pools: page-table pairs (hardware table + kernel shadow), then data pages. */
#define PT_POOL_START UL(0x800000)
#define PT_POOL_END UL(0x1000000)
#define PAGE_POOL_START UL(0x1000000)
#define PAGE_POOL_END UL(0x3000000)

/* GDT selectors (Linux layout; STAR makes sysret give 0x33/0x2b). */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_TSS 0x18
#define SEL_UDATA 0x2b
#define SEL_UCODE 0x33

/* Pseudo vector of a trap frame built by the architectural `syscall` stub. */
#define VEC_SYSCALL 0x100
#define VEC_IRQ0 0x20

/* User address space. */
#define USER_IMAGE_BASE UL(0x400000)
#define USER_HEAP_BASE UL(0x10000000)
#define USER_HEAP_SIZE UL(0x1000000)
#define USER_STACK_TOP UL(0x7ffff000)
#define USER_STACK_SIZE UL(0x40000)
#define USER_TOP UL(0x800000000000)

#define KSTACK_SIZE 16384
#define NPROC 8
#define TIMER_HZ 100

#endif
