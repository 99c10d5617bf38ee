/* The user programs' tiny runtime: system calls and printf. */
#ifndef KRR_DEMO_ULIB_H
#define KRR_DEMO_ULIB_H

#include <stdarg.h>
#include "../syscalls.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long usize;

#define NULL ((void *)0)
#define PAGE_SIZE 4096UL
#define USER_HEAP_BASE 0x10000000UL

static inline long syscall3(long nr, long a0, long a1, long a2)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a0), "S"(a1), "d"(a2) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_write(const void *buf, usize len) { return syscall3(SYS_WRITE, (long)buf, (long)len, 0); }
static inline long sys_read_disk(u64 off, void *buf, usize len) { return syscall3(SYS_READ_DISK, (long)off, (long)buf, (long)len); }
static inline long sys_sleep(u64 ticks) { return syscall3(SYS_SLEEP, (long)ticks, 0, 0); }
static inline long sys_getpid(void) { return syscall3(SYS_GETPID, 0, 0, 0); }
static inline long sys_uptime(void) { return syscall3(SYS_UPTIME, 0, 0, 0); }
static inline long sys_spawn(int prog) { return syscall3(SYS_SPAWN, prog, 0, 0); }
static inline long sys_wait(long pid) { return syscall3(SYS_WAIT, pid, 0, 0); }
static inline u64 sys_random(void) { return (u64)syscall3(SYS_RANDOM, 0, 0, 0); }
__attribute__((noreturn)) static inline void sys_exit(long code)
{
	syscall3(SYS_EXIT, code, 0, 0);
	__builtin_unreachable();
}

void *memset(void *dst, int c, usize n);
void *memcpy(void *dst, const void *src, usize n);
usize strlen(const char *s);
int vformat(char *buf, usize cap, const char *fmt, va_list ap);

/* printf with the "[name:pid] " prefix, one write system call per call. */
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *heap_alloc(usize n);

#endif
