/* The user programs; their order is the kernel's PROG_* numbering (kernel.h). */
#ifndef KRR_DEMO_PROGRAMS_H
#define KRR_DEMO_PROGRAMS_H

long primes_main(void);
long disk_main(void);
long clock_main(void);
long pager_main(void);
long crash_ud_main(void);
long crash_pf_main(void);

#define PROG_CRASH_UD 4
#define PROG_CRASH_PF 5

#endif
