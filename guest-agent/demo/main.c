/* Demo kernel entry: bring the machine up, start the user programs, schedule. */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

#ifdef KRR_AGENT_SELFTEST
void agent_selftest_init(void);
void agent_selftest_report(void);
#endif

void kmain(void)
{
	uart_init();
	arch_init();
	mm_init();
#ifdef KRR_AGENT_SELFTEST
	agent_selftest_init();
#else
	krr_agent_init((void *)RING_VA);
#endif
	kprintf("krr-demo: booting, agent %s\n", krr_agent_enabled() ? "enabled" : "disabled (no ring)");
	pic_init();
	pit_init(TIMER_HZ);
	int err = disk_init();
	if (err == 0)
		kprintf("krr-demo: disk %s: %lu bytes\n", KRR_DISK_FW_CFG_NAME, disk_size());
	else
		kprintf("krr-demo: no disk (fw_cfg error %d)\n", err);
	time_init();
	random_init();
	static const u32 initial[] = {PROG_PRIMES, PROG_DISK, PROG_CLOCK, PROG_PAGER};
	for (u32 i = 0; i < ARRAY_SIZE(initial); i++)
		if (proc_spawn(initial[i], NULL) < 0)
			panic("cannot start program %u", initial[i]);
	scheduler();
	kprintf("krr-demo: stats: %lu syscalls (%lu as #PF at LSTAR, %lu architectural), %lu timer ticks (%lu in user "
		"mode), %lu demand-paging faults\n",
		stat_syscalls_fault + stat_syscalls_arch, stat_syscalls_fault, stat_syscalls_arch, (u64)ticks,
		stat_user_irqs, stat_demand_faults);
#ifdef KRR_AGENT_SELFTEST
	agent_selftest_report();
#endif
	kprintf("krr-demo: all processes exited, powering off\n");
	power_off(0);
}
