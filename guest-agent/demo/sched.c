/*
 * Processes and the round-robin scheduler. The kernel runs with interrupts disabled except
 * in the scheduler's idle wait (`sti; hlt`), so the only preemption point is a timer
 * interrupt that arrives in user mode.
 */
#include "kernel.h"

enum proc_state { UNUSED, RUNNABLE, RUNNING, SLEEPING, WAITING, ZOMBIE };

struct proc {
	enum proc_state state;
	int pid;
	const char *name;
	struct proc *parent;
	u64 pml4;
	u64 ksp; /* saved kernel stack pointer while switched out */
	u64 wake_tick;
	int wait_pid;
	i64 exit_code;
};

static const char *const prog_names[NPROGS] = {
	[PROG_PRIMES] = "primes", [PROG_DISK] = "disk",	       [PROG_CLOCK] = "clock",
	[PROG_PAGER] = "pager",	  [PROG_CRASH_UD] = "crash-ud", [PROG_CRASH_PF] = "crash-pf",
};

static struct proc procs[NPROC];
static u8 kstacks[NPROC][KSTACK_SIZE] __attribute__((aligned(16)));
static u64 scheduler_sp;
static int next_pid = 1;
static int live;
struct proc *cur;
volatile u64 ticks;

int proc_pid(void) { return cur ? cur->pid : 0; }
u64 proc_pml4(void) { return cur ? cur->pml4 : 0; }
const char *proc_name(void) { return cur ? cur->name : "kernel"; }

static u64 kstack_top(struct proc *p) { return (u64)kstacks[p - procs] + KSTACK_SIZE; }

int proc_spawn(u32 prog, struct proc *parent)
{
	if (prog >= NPROGS)
		return -1;
	struct proc *p = NULL;
	for (int i = 0; i < NPROC; i++)
		if (procs[i].state == UNUSED) {
			p = &procs[i];
			break;
		}
	if (!p)
		return -1;
	u64 pml4 = aspace_create();
	if (!pml4)
		return -1;
	*p = (struct proc){0};
	p->pid = next_pid++;
	p->name = prog_names[prog];
	p->parent = parent;
	p->pml4 = pml4;

	/* The first run returns to user mode through this frame: entry point, empty stack. */
	struct trapframe *tf = (struct trapframe *)(kstack_top(p) - sizeof(struct trapframe));
	memset(tf, 0, sizeof(*tf));
	tf->rip = USER_IMAGE_BASE;
	tf->cs = SEL_UCODE;
	tf->rflags = RFLAGS_IF | 0x2;
	tf->rsp = USER_STACK_TOP;
	tf->ss = SEL_UDATA;
	tf->rdi = prog;
	tf->rsi = (u64)p->pid;
	u64 *sp = (u64 *)tf;
	*--sp = (u64)proc_first_return;
	for (int i = 0; i < 6; i++) /* rbp rbx r12 r13 r14 r15 for swtch */
		*--sp = 0;
	p->ksp = (u64)sp;
	p->state = RUNNABLE;
	live++;
	return p->pid;
}

static void sched(void) { swtch(&cur->ksp, scheduler_sp); }

void proc_yield(void)
{
	cur->state = RUNNABLE;
	sched();
}

void proc_sleep(u64 nticks)
{
	cur->wake_tick = ticks + nticks;
	cur->state = SLEEPING;
	sched();
}

void sched_timer_tick(void)
{
	ticks++;
	for (int i = 0; i < NPROC; i++)
		if (procs[i].state == SLEEPING && procs[i].wake_tick <= ticks)
			procs[i].state = RUNNABLE;
}

void proc_exit(i64 code)
{
	struct proc *p = cur;
	kernel_aspace_activate(); /* before its page tables go back to the pool */
	aspace_destroy(p->pml4);
	p->pml4 = 0;
	p->exit_code = code;
	live--;
	kprintf("krr-demo: pid %d (%s) exited with code %ld\n", p->pid, p->name, code);
	for (int i = 0; i < NPROC; i++) /* orphans: nobody will wait for them */
		if (procs[i].parent == p) {
			procs[i].parent = NULL;
			if (procs[i].state == ZOMBIE)
				procs[i].state = UNUSED;
		}
	struct proc *parent = p->parent;
	if (parent) {
		p->state = ZOMBIE;
		if (parent->state == WAITING && parent->wait_pid == p->pid)
			parent->state = RUNNABLE;
	} else {
		p->state = UNUSED; /* its kernel stack stays untouched until the next spawn */
	}
	sched();
	panic("exited process %d ran again", p->pid);
}

i64 proc_wait(int pid)
{
	struct proc *child = NULL;
	for (int i = 0; i < NPROC; i++)
		if (procs[i].state != UNUSED && procs[i].pid == pid && procs[i].parent == cur)
			child = &procs[i];
	if (!child)
		return -1;
	while (child->state != ZOMBIE) {
		cur->wait_pid = pid;
		cur->state = WAITING;
		sched();
	}
	i64 code = child->exit_code;
	child->state = UNUSED;
	return code;
}

/* Run processes until none is left. */
void scheduler(void)
{
	u32 last = NPROC - 1;
	for (;;) {
		struct proc *p = NULL;
		for (u32 k = 1; k <= NPROC; k++) {
			u32 i = (last + k) % NPROC;
			if (procs[i].state == RUNNABLE) {
				p = &procs[i];
				last = i;
				break;
			}
		}
		if (p) {
			p->state = RUNNING;
			cur = p;
			tss_set_rsp0(kstack_top(p));
			aspace_activate(p->pml4);
			swtch(&scheduler_sp, p->ksp);
			cur = NULL;
			continue;
		}
		if (live == 0)
			break;
		sti_hlt(); /* idle: the timer interrupt wakes us in kernel mode */
		cli();
	}
}
