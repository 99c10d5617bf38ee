/*
 * Freestanding helpers shared by the kernel and the user programs (compiled twice).
 * Copies and fills are plain loops: ring-0 code must not use rep string instructions.
 */
#ifdef KRR_USER
#include "ulib.h"
#else
#include "kernel.h"
#endif

void *memset(void *dst, int c, usize n)
{
	u8 *d = dst;
	u64 word = (u8)c * 0x0101010101010101UL;
	while (n && ((u64)d & 7)) {
		*d++ = (u8)c;
		n--;
	}
	for (; n >= 8; n -= 8, d += 8)
		*(volatile u64 *)d = word; /* volatile: keep it a loop, never a builtin call */
	while (n--)
		*d++ = (u8)c;
	return dst;
}

void *memcpy(void *dst, const void *src, usize n)
{
	u8 *d = dst;
	const u8 *s = src;
	if ((((u64)d | (u64)s) & 7) == 0) {
		for (; n >= 8; n -= 8, d += 8, s += 8)
			*(volatile u64 *)d = *(const u64 *)s;
	}
	while (n--)
		*(volatile u8 *)d++ = *s++;
	return dst;
}

int memcmp(const void *a, const void *b, usize n)
{
	const u8 *x = a, *y = b;
	for (usize i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

usize strlen(const char *s)
{
	usize n = 0;
	while (s[n])
		n++;
	return n;
}

struct out {
	char *buf;
	usize cap, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->cap)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct out *o, u64 v, u32 base, int width, char pad, int neg)
{
	char tmp[24];
	int n = 0;
	do {
		u32 d = (u32)(v % base);
		tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	for (int i = n; i < width; i++)
		put(o, pad);
	while (n)
		put(o, tmp[--n]);
}

/* printf subset: %d %i %u %x %p %s %c %%, with l/ll, zero padding and a width. */
int vformat(char *buf, usize cap, const char *fmt, va_list ap)
{
	struct out o = {buf, cap, 0};
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, is_long = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			i64 v = is_long ? va_arg(ap, i64) : va_arg(ap, int);
			put_num(&o, v < 0 ? (u64)-v : (u64)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(&o, is_long ? va_arg(ap, u64) : va_arg(ap, unsigned int), 10, width, pad, 0);
			break;
		case 'x':
			put_num(&o, is_long ? va_arg(ap, u64) : va_arg(ap, unsigned int), 16, width, pad, 0);
			break;
		case 'p':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, (u64)va_arg(ap, void *), 16, width, pad, 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			while (*s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case '%':
			put(&o, '%');
			break;
		default:
			put(&o, '%');
			if (*fmt)
				put(&o, *fmt);
			else
				fmt--;
		}
	}
	if (cap)
		o.buf[o.len < cap ? o.len : cap - 1] = 0;
	return (int)o.len;
}
