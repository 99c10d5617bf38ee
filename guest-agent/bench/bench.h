/* Constants of the replay-speed benchmark loop, shared by bench_loop.S and bench.c. */
#ifndef KRR_BENCH_H
#define KRR_BENCH_H

/* Counted by hand in bench_loop.S: 23 in the loop body plus 3 in bench_mix. */
#define BENCH_INSNS_PER_ITERATION 26
#define BENCH_SEED 0x9e3779b97f4a7c15
#define BENCH_MUL 0x2545f491

#endif
