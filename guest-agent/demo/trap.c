/* The common kernel entry: agent hook, system calls (both arrival paths), IRQs, faults. */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

static const char *const exception_names[32] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
	"#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
	"#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
	"#PF page fault", "reserved 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
	"#XM SIMD error", "#VE virtualization", "#CP control protection",
};

static const char *exception_name(u64 v)
{
	const char *n = v < 32 ? exception_names[v] : NULL;
	return n ? n : "exception";
}

/*
 * On the PVM host a user `syscall` jumps to LSTAR without leaving ring 3 and faults there:
 * #PF, error code 0x15 (present, user, instruction fetch), RIP = LSTAR, user CS, IF = 0.
 * User code cannot produce IF = 0 itself, so this shape is a system call.
 */
static int is_syscall_fault(const struct trapframe *tf)
{
	return tf->vector == 14 && tf->rip == (u64)syscall_entry && (tf->cs & 3) == 3 && !(tf->rflags & RFLAGS_IF) &&
	       tf->error == 0x15;
}

/* Counters for the final statistics line. */
u64 stat_syscalls_fault, stat_syscalls_arch, stat_user_irqs, stat_demand_faults;

/* What sysretq would give from R11: no IOPL, interrupts on. */
static u64 user_rflags_from_r11(u64 r11) { return (r11 & 0x3c7fd7UL & ~0x3000UL) | 0x202UL; }

/* Other interrupt lines have no driver in the demo; a test guest may define one. */
__attribute__((weak)) void irq_hook(u32 vector) { (void)vector; }

void trap(struct trapframe *tf)
{
	int from_user = (tf->cs & 3) == 3;
	u64 cr2 = tf->vector == 14 ? read_cr2() : 0;
	if (from_user) {
		u32 kind = tf->vector == VEC_SYSCALL ? KRR_ENTRY_SYSCALL
			   : tf->vector >= 32	     ? KRR_ENTRY_INTERRUPT
						     : KRR_ENTRY_EXCEPTION;
		krr_agent_user_entry(kind, tf, cr2);
	}

	if (tf->vector == VEC_SYSCALL) {
		stat_syscalls_arch++;
		syscall_dispatch(tf); /* the frame already returns to RCX with RFLAGS = R11 */
		return;
	}
	if (from_user && is_syscall_fault(tf)) {
		stat_syscalls_fault++;
		tf->rip = tf->rcx;
		tf->rflags = user_rflags_from_r11(tf->r11);
		syscall_dispatch(tf);
		return;
	}
	if (tf->vector >= VEC_IRQ0 && tf->vector < VEC_IRQ0 + 16) {
		if (pic_spurious((u32)tf->vector))
			return;
		if (tf->vector == VEC_IRQ0) {
			sched_timer_tick();
			pic_eoi((u32)tf->vector);
			stat_user_irqs += from_user;
			if (from_user && cur)
				proc_yield();
			return;
		}
		irq_hook((u32)tf->vector);
		pic_eoi((u32)tf->vector);
		return;
	}
	if (!from_user)
		panic("%s in kernel mode: rip %lx err %lx cr2 %lx rsp %lx", exception_name(tf->vector), tf->rip,
		      tf->error, cr2, tf->rsp);
	if (tf->vector == 14 && !(tf->error & 1) && user_fault(proc_pml4(), cr2) == 0) {
		stat_demand_faults++;
		return; /* demand paging */
	}
	if (tf->vector == 14)
		kprintf("krr-demo: pid %d (%s) killed: %s at rip %lx, address %lx, error %lx\n", proc_pid(), proc_name(),
			exception_name(tf->vector), tf->rip, cr2, tf->error);
	else
		kprintf("krr-demo: pid %d (%s) killed: %s at rip %lx\n", proc_pid(), proc_name(), exception_name(tf->vector),
			tf->rip);
	proc_exit(128 + (i64)tf->vector);
}
