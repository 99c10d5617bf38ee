// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * mmap-check: a step of the stress workload (stress.sh). Writes a file on the root tmpfs
 * through a shared mapping, unmaps it, reads the file back with read(2) and prints what
 * it read. The kernel learns of the writes only from the page-table entries' dirty bits,
 * which the CPU set in user mode (replay's PTE reads), and read(2) copies the pages user
 * mode wrote. Busybox has no tool that writes through a mapping, hence this program:
 * static, no C library (build.sh builds it with the system gcc), system calls by number.
 */
#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_LSEEK 8
#define SYS_MMAP 9
#define SYS_MUNMAP 11
#define SYS_MSYNC 26
#define SYS_FTRUNCATE 77
#define SYS_UNLINK 87
#define SYS_EXIT_GROUP 231

#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 1
#define MS_SYNC 4

/* Three pages and a part of a fourth: a mapping whose last page is partly past the end. */
#define FILE_SIZE (3 * 4096 + 1000)

static long sys6(long nr, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static long sys3(long nr, long a, long b, long c)
{
	return sys6(nr, a, b, c, 0, 0, 0);
}

static unsigned long length(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	return n;
}

static void print(const char *s)
{
	sys3(SYS_WRITE, 1, (long)s, (long)length(s));
}

static void print_hex(unsigned long v)
{
	char buf[19];
	int i;

	buf[0] = '0';
	buf[1] = 'x';
	for (i = 0; i < 16; i++)
		buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
	buf[18] = 0;
	print(buf);
}

static void print_decimal(unsigned long v)
{
	char buf[21];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do
		buf[--i] = (char)('0' + v % 10);
	while ((v /= 10) && i > 0);
	print(buf + i);
}

static unsigned char pattern(unsigned long i)
{
	return (unsigned char)(i * 7 + (i >> 8) * 13 + 1);
}

static unsigned char back[FILE_SIZE + 1];

static int check(void)
{
	static const char path[] = "/tmp/mmap-check";
	unsigned long hash = 0xcbf29ce484222325UL, i;
	unsigned char *map;
	long fd, got, total = 0;

	fd = sys3(SYS_OPEN, (long)path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || sys3(SYS_FTRUNCATE, fd, FILE_SIZE, 0) < 0) {
		print("mmap-check: cannot create /tmp/mmap-check\n");
		return 1;
	}
	map = (unsigned char *)sys6(SYS_MMAP, 0, FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
				    fd, 0);
	if ((unsigned long)map > -4096UL) {
		print("mmap-check: mmap failed\n");
		return 1;
	}
	for (i = 0; i < FILE_SIZE; i++)
		map[i] = pattern(i);
	if (sys3(SYS_MSYNC, (long)map, FILE_SIZE, MS_SYNC) < 0 ||
	    sys3(SYS_MUNMAP, (long)map, FILE_SIZE, 0) < 0) {
		print("mmap-check: msync or munmap failed\n");
		return 1;
	}
	sys3(SYS_LSEEK, fd, 0, 0);
	while (total < FILE_SIZE + 1) {
		got = sys3(SYS_READ, fd, (long)(back + total), FILE_SIZE + 1 - total);
		if (got <= 0)
			break;
		total += got;
	}
	sys3(SYS_CLOSE, fd, 0, 0);
	sys3(SYS_UNLINK, (long)path, 0, 0);
	if (total != FILE_SIZE) {
		print("mmap-check: read(2) gave back ");
		print_decimal((unsigned long)total);
		print(" bytes\n");
		return 1;
	}
	for (i = 0; i < FILE_SIZE; i++) {
		if (back[i] != pattern(i)) {
			print("mmap-check: read(2) differs from the mapping's writes at ");
			print_hex(i);
			print("\n");
			return 1;
		}
		hash = (hash ^ back[i]) * 0x100000001b3UL;
	}
	print("mmap-check: ");
	print_decimal(FILE_SIZE);
	print(" bytes written through a shared mapping, read(2) gave them back, fnv-1a ");
	print_hex(hash);
	print("\n");
	return 0;
}

/* The entry point: the kernel leaves the stack 16-byte aligned, not as a call would. */
__attribute__((noreturn, force_align_arg_pointer)) void _start(void)
{
	sys3(SYS_EXIT_GROUP, check(), 0, 0);
	__builtin_unreachable();
}
