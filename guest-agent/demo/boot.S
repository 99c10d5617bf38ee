/*
 * Boot: the PVH 32-bit entry (QEMU -kernel), and the 64-bit entry point e_entry.
 *
 * 64-bit entry (_start64): long mode, CPL0, interrupts off, with page tables mapping
 * KERNEL_VMA -> physical 0 (the recorder's or the PVH stub's). It zeroes .bss, takes the
 * boot stack and calls kmain, which installs the kernel's own GDT, IDT, TSS and page tables.
 *
 * PVH entry (pvh_start32, physical address in the Xen ELF note): 32-bit protected mode,
 * paging off. It builds temporary tables (identity 1 GiB plus KERNEL_VMA -> 0), enables
 * long mode and jumps to _start64.
 */
#include "layout.h"

#define PHYS(sym) ((sym) - KERNEL_VMA)

	.section .note.pvh, "a", @note
	.p2align 2
	.long 4          /* name size */
	.long 8          /* desc size */
	.long 18         /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.p2align 2
	.quad PHYS(pvh_start32)

	.section .boot32, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	/* Zero the three temporary tables (plain loop: no rep string instructions). */
	movl $PHYS(pvh_pml4), %edi
	movl $(3 * 1024), %ecx
	xorl %eax, %eax
1:	movl %eax, (%edi)
	addl $4, %edi
	decl %ecx
	jnz 1b
	movl $PHYS(pvh_pdpt), %eax
	orl $3, %eax
	movl %eax, PHYS(pvh_pml4)
	movl %eax, PHYS(pvh_pml4) + 511 * 8
	movl $PHYS(pvh_pd), %eax
	orl $3, %eax
	movl %eax, PHYS(pvh_pdpt)
	movl %eax, PHYS(pvh_pdpt) + 510 * 8
	movl $PHYS(pvh_pd), %edi
	movl $0x83, %eax /* present, writable, 2 MiB */
	movl $512, %ecx
2:	movl %eax, (%edi)
	addl $0x200000, %eax
	addl $8, %edi
	decl %ecx
	jnz 2b
	movl %cr4, %eax
	orl $0x20, %eax /* PAE */
	movl %eax, %cr4
	movl $PHYS(pvh_pml4), %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx
	rdmsr
	orl $0x100, %eax /* EFER.LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax /* PG | PE */
	movl %eax, %cr0
	lgdt PHYS(pvh_gdt_ptr)
	ljmp $SEL_KCODE, $PHYS(pvh_start64_low)

	.section .text
	.code64
pvh_start64_low:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movabsq $_start64, %rax
	jmp *%rax

	.globl _start64
_start64:
	cli
	/* Zero .bss with a plain loop (the loader may not have, and no rep stos at ring 0). */
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
3:	cmpq %rcx, %rdi
	jae 4f
	movq $0, (%rdi)
	addq $8, %rdi
	jmp 3b
4:	leaq boot_stack_top(%rip), %rsp
	xorl %ebp, %ebp
	call kmain
5:	cli
	hlt
	jmp 5b

	.section .rodata
	.p2align 3
pvh_gdt:
	.quad 0
	.quad 0x00af9a000000ffff /* 0x08: code64 */
	.quad 0x00cf92000000ffff /* 0x10: data */
pvh_gdt_end:
pvh_gdt_ptr:
	.word pvh_gdt_end - pvh_gdt - 1
	.long PHYS(pvh_gdt)

	/* In .data, not .bss: _start64 zeroes .bss while these tables are still in use. */
	.section .data
	.p2align 12
pvh_pml4:
	.space 4096
pvh_pdpt:
	.space 4096
pvh_pd:
	.space 4096

	.section .bss
	.p2align 12
	.globl boot_stack_top
boot_stack:
	.space KSTACK_SIZE
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
