/*
 * Kernel entry and exit: exception/interrupt stubs, the syscall (LSTAR) stub, the common
 * trap path, the context switch. Every entry builds a struct trapframe (kernel.h).
 */
#include "layout.h"

	.section .text
	.code64

/* Exceptions without a CPU error code push a zero so that every frame has the same shape. */
.macro ISR_NOERR n
	.p2align 4
isr\n:
	pushq $0
	pushq $\n
	jmp trap_common
.endm
.macro ISR_ERR n
	.p2align 4
isr\n:
	pushq $\n
	jmp trap_common
.endm

ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR 8
ISR_NOERR 9
ISR_ERR 10
ISR_ERR 11
ISR_ERR 12
ISR_ERR 13
ISR_ERR 14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR 17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR 21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR 29
ISR_ERR 30
ISR_NOERR 31
.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
ISR_NOERR \n
.endr

/*
 * Architectural `syscall` (VT-x hosts, QEMU): CPL0 with the user's RSP, interrupts masked by
 * FMASK. Switch to the current process's kernel stack and build the frame an iretq to the
 * user at RCX with RFLAGS = R11 needs. (On the PVM host the same instruction arrives as a
 * page fault at this address instead; trap.c recognises it.)
 */
	.p2align 4
	.globl syscall_entry
syscall_entry:
	movq %rsp, syscall_user_rsp(%rip)
	movq cpu_kstack_top(%rip), %rsp
	pushq $SEL_UDATA
	pushq syscall_user_rsp(%rip)
	pushq %r11
	pushq $SEL_UCODE
	pushq %rcx
	pushq $0
	pushq $VEC_SYSCALL
	jmp trap_common

	.p2align 4
trap_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	cld
	movq %rsp, %rdi
	call trap
	/*
	 * No symbol at the return address: gdb names a frame by the symbol at its pc (here
	 * the return address) but the caller's frame, when it sets `finish`'s breakpoint,
	 * by the symbol before the return address (trap_common); a label here makes the
	 * two differ, and `finish` from trap() or syscall_dispatch() never stops.
	 */
.Ltrap_return:
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/* A new process's first run: swtch returns here with RSP at its initial trap frame. */
	.globl proc_first_return
proc_first_return:
	jmp .Ltrap_return

/* void swtch(u64 *save_sp, u64 new_sp): switch kernel stacks, callee-saved registers only. */
	.globl swtch
swtch:
	pushq %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, (%rdi)
	movq %rsi, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret

/* Reload CS with a far return and the data segments after lgdt. */
	.globl gdt_reload_segments
gdt_reload_segments:
	movl $SEL_KDATA, %eax
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %fs
	movl %eax, %gs
	popq %rax
	pushq $SEL_KCODE
	pushq %rax
	lretq

	.section .rodata
	.p2align 3
	.globl isr_table
isr_table:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.quad isr\n
.endr

	.section .bss
	.p2align 3
syscall_user_rsp:
	.quad 0

	.section .note.GNU-stack, "", @progbits
