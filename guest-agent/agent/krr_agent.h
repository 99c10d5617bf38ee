/*
 * The krr-tui guest agent of the demo kernel.
 *
 * The hook functions below are found by name in the kernel's ELF symbol table by replay:
 * keep their names, keep them global and never inline them. Every hook is a no-op when
 * no ring was found at boot (for example under QEMU).
 */
#ifndef KRR_AGENT_H
#define KRR_AGENT_H

struct trapframe;

/* Find the ring the recorder set up (mapped at ring_va); disables the agent if absent. */
void krr_agent_init(void *ring_va);
int krr_agent_enabled(void);

/*
 * Every kernel entry from user mode, before anything else uses user state.
 * entry_kind is a KRR_ENTRY_*; the frame holds the user registers as they were;
 * cr2 is the faulting address for a page fault (0 for other entries).
 */
void krr_agent_user_entry(unsigned int entry_kind, const struct trapframe *tf, unsigned long cr2);

/* After copy_from_user and friends copied len bytes from user src into kernel dst. */
void krr_agent_user_read(void *dst, const void *src, unsigned long len);

/* rdtsc, recorded. All kernel uses of the TSC go through it. */
unsigned long krr_agent_rdtsc(void);

/*
 * One rdrand / rdseed, recorded: returns its carry flag (1: *value holds a random
 * number; 0: the CPU had none, retry). Only where CPUID advertises the instruction.
 */
int krr_agent_rdrand(unsigned long *value);
int krr_agent_rdseed(unsigned long *value);

/* Ask the recorder to consume the ring now (before power-off). */
void krr_agent_flush(void);

#endif
