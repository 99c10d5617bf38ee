/* Demo kernel entry: bring the machine up, start the user programs, schedule. */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

void kmain(void)
{
	uart_init();
	arch_init();
	mm_init();
	krr_agent_init((void *)RING_VA);
	kprintf("krr-demo: booting, agent %s\n", krr_agent_enabled() ? "enabled" : "disabled (no ring)");
	pic_init();
	pit_init(TIMER_HZ);
	int err = disk_init();
	if (err == 0)
		kprintf("krr-demo: disk %s: %lu bytes\n", KRR_DISK_FW_CFG_NAME, disk_size());
	else
		kprintf("krr-demo: no disk (fw_cfg error %d)\n", err);
	time_init();
	static const u32 initial[] = {PROG_PRIMES, PROG_DISK, PROG_CLOCK, PROG_PAGER};
	for (u32 i = 0; i < ARRAY_SIZE(initial); i++)
		if (proc_spawn(initial[i], NULL) < 0)
			panic("cannot start program %u", initial[i]);
	scheduler();
}
