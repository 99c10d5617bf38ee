/* Console on the COM1 16550 UART, kernel printf, panic and power-off. */
#include "kernel.h"
#include "krr_agent.h"
#include "krr_agent_abi.h"

#define COM1 KRR_PORT_COM1
#define LSR_THR_EMPTY 0x20

void uart_init(void)
{
	outb(COM1 + 1, 0x00); /* no UART interrupts */
	outb(COM1 + 3, 0x80); /* DLAB */
	outb(COM1 + 0, 0x01); /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03); /* 8N1 */
	outb(COM1 + 2, 0xc7); /* FIFO on, cleared */
	outb(COM1 + 4, 0x03); /* DTR RTS */
}

static void uart_putc(char c)
{
	while (!(inb(COM1 + 5) & LSR_THR_EMPTY))
		;
	outb(COM1, (u8)c);
}

void uart_write(const char *s, usize n)
{
	for (usize i = 0; i < n; i++) {
		if (s[i] == '\n')
			uart_putc('\r');
		uart_putc(s[i]);
	}
}

void kprintf(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vformat(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	uart_write(buf, n < (int)sizeof(buf) ? (usize)n : sizeof(buf) - 1);
}

void power_off(u8 code)
{
	cli();
	krr_agent_flush();
	outb(KRR_PORT_POWEROFF, code);
	for (;;)
		hlt();
}

void panic(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vformat(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	kprintf("krr-demo: PANIC: ");
	uart_write(buf, n < (int)sizeof(buf) ? (usize)n : sizeof(buf) - 1);
	kprintf("\n");
	power_off(1);
}
