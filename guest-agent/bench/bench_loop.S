/*
 * The replay-speed benchmark loop: ordinary ring-0 integer code (loads, stores, ALU, shifts,
 * a multiply, a data-dependent branch, a call) with a fixed instruction count per iteration,
 * so that an instruction rate follows from a wall time. Both sides of the branch execute the
 * same number of instructions. krr_guest::bench_loop_checksum mirrors it in Rust.
 *
 *   u64 bench_loop(u64 iterations, u64 table[256]) -> checksum
 */
#include "bench.h"

	.text
	.globl bench_loop
	.type bench_loop, @function
bench_loop:
	push %rbx
	movabs $BENCH_SEED, %rax	/* xorshift64 state */
	xor %ebx, %ebx			/* checksum */
	mov %rdi, %rcx			/* iterations left */
	test %rcx, %rcx
	jz 9f
	.p2align 4
	/* BENCH_INSNS_PER_ITERATION instructions from here to the jnz, the callee included. */
1:	mov %rax, %rdx
	shl $13, %rdx
	xor %rdx, %rax
	mov %rax, %rdx
	shr $7, %rdx
	xor %rdx, %rax
	mov %rax, %rdx
	shl $17, %rdx
	xor %rdx, %rax
	/* read-modify-write of one of 256 table words */
	movzbl %al, %edx
	mov (%rsi,%rdx,8), %r8
	add %rax, %r8
	rol $5, %r8
	mov %r8, (%rsi,%rdx,8)
	/* 4 instructions either way */
	test $0x100, %eax
	jz 2f
	sub %rdx, %rbx
	jmp 3f
2:	add %r8, %rbx
	xor %rcx, %rbx
3:	mov %rbx, %rdi
	call bench_mix
	xor %r9, %rbx
	dec %rcx
	jnz 1b
9:	mov %rbx, %rax
	pop %rbx
	ret
	.size bench_loop, . - bench_loop

	/* r9 = (rdi * BENCH_MUL) >> 29 (truncated to 64 bits before the shift) */
	.type bench_mix, @function
bench_mix:
	imul $BENCH_MUL, %rdi, %r9
	shr $29, %r9
	ret
	.size bench_mix, . - bench_mix

	.section .note.GNU-stack, "", @progbits
