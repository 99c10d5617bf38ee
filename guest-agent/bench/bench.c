/*
 * The replay-speed benchmark kernel: boots like the demo kernel, runs bench_loop for
 * BENCH_ITERATIONS iterations (a build-time define; 0 for the boot-only variant) with
 * interrupts off, prints the checksum and the counts, and powers off.
 */
#include "bench.h"
#include "kernel.h"
#include "krr_agent_abi.h"

#ifndef BENCH_ITERATIONS
#error "BENCH_ITERATIONS must be defined"
#endif

u64 bench_loop(u64 iterations, u64 *table);

static u64 table[256];

void kmain(void)
{
	uart_init();
	arch_init();
	mm_init();
	kprintf("bench-loop: running %lu iterations of %u instructions\n", (u64)BENCH_ITERATIONS,
		BENCH_INSNS_PER_ITERATION);
	for (u64 i = 0; i < ARRAY_SIZE(table); i++)
		table[i] = i;
	/*
	 * Mask every PIC line. Interrupts are off during the loop anyway, but an emulator
	 * that checks for pending interrupts between blocks (QEMU, one instruction a block)
	 * would otherwise pay for a line that stays raised the whole time, which made the
	 * comparison unfair to it.
	 */
	outb(KRR_PORT_PIC_MASTER + 1, 0xff);
	outb(KRR_PORT_PIC_SLAVE + 1, 0xff);
	u64 sum = bench_loop(BENCH_ITERATIONS, table);
	kprintf("bench-loop: checksum %016lx after %lu iterations of %u instructions\n", sum, (u64)BENCH_ITERATIONS,
		BENCH_INSNS_PER_ITERATION);
	power_off(0);
}
