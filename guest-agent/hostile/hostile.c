/*
 * Hostile test guests for the recorder's robustness tests, built from the demo kernel's
 * infrastructure with HOSTILE_KIND selecting the behaviour. Each prints one line first.
 */
#include "kernel.h"
#include "krr_agent_abi.h"

#define RING_GARBAGE 1
#define RING_HEADER 2
#define DOORBELL_NONSENSE 3
#define NO_POWEROFF 4
#define TRIPLE_FAULT 5
#define PARTIAL_LINE 6
#define PARTIAL_LINE_SILENT 7
#define PORT_INPUT 8

#ifndef HOSTILE_KIND
#error "HOSTILE_KIND must be defined"
#endif

static u64 rng = 0x9e3779b97f4a7c15UL;
static u64 xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static volatile struct krr_ring_header *ring_header(void)
{
	volatile struct krr_ring_header *h = (volatile struct krr_ring_header *)RING_VA;
	if (h->magic != KRR_RING_MAGIC || h->header_size > KRR_RING_REGION_SIZE / 2)
		return NULL;
	return h;
}

static void doorbell(u32 code) { outl(KRR_PORT_DOORBELL, code); }

__attribute__((unused)) static void ring_garbage(void)
{
	kprintf("hostile ring-garbage: records with garbage kinds and sizes\n");
	volatile struct krr_ring_header *h = ring_header();
	if (!h)
		return;
	u64 cap = h->capacity;
	if (cap > KRR_RING_REGION_SIZE - h->header_size)
		cap = KRR_RING_REGION_SIZE - h->header_size;
	volatile u64 *area = (volatile u64 *)((u64)h + h->header_size);
	u64 fill = cap < 8192 ? cap : 8192;
	for (u64 i = 0; i < fill / 8; i++)
		area[i] = xorshift();
	/* kind 0xffff; a USER_ENTRY of size 8; a USER_READ claiming 4 GiB; an odd size */
	area[0] = 0xffffUL | 16UL << 32;
	area[2] = 1UL | 8UL << 32;
	area[3] = 2UL | 0xfffffff8UL << 32;
	h->head = fill;
	doorbell(KRR_DOORBELL_FULL);
	area[0] = 3UL | 13UL << 32; /* size not a multiple of 8 */
	h->head = 64;
	doorbell(KRR_DOORBELL_FLUSH);
	area[0] = 1UL; /* size 0: a reader that does not advance would loop forever */
	h->head = 8;
	doorbell(KRR_DOORBELL_FULL);
	for (u64 i = 0; i < fill / 8; i++)
		area[i] = xorshift();
	h->head = fill;
	doorbell(KRR_DOORBELL_FLUSH);
}

__attribute__((unused)) static void ring_header_abuse(void)
{
	kprintf("hostile ring-header: absurd head and capacity values\n");
	volatile struct krr_ring_header *h = ring_header();
	if (!h)
		return;
	h->head = 1UL << 63;
	doorbell(KRR_DOORBELL_FULL);
	h->head = (u64)h->capacity + 8;
	doorbell(KRR_DOORBELL_FLUSH);
	h->head = 7;
	doorbell(KRR_DOORBELL_FULL);
	h->head = ~0UL;
	doorbell(KRR_DOORBELL_FLUSH);
	h->capacity = 0xffffffffu;
	h->header_size = 0xfffffff0u;
	h->head = 0x1000;
	doorbell(KRR_DOORBELL_FULL);
	h->magic = 0;
	h->version = 0xdead;
	doorbell(KRR_DOORBELL_FLUSH);
}

__attribute__((unused)) static void doorbell_nonsense(void)
{
	kprintf("hostile doorbell-nonsense: random doorbell codes and access sizes\n");
	for (int i = 0; i < 1000; i++)
		doorbell((u32)xorshift());
	outb(KRR_PORT_DOORBELL, KRR_DOORBELL_FULL);
	outw(KRR_PORT_DOORBELL, KRR_DOORBELL_FLUSH);
	outb(KRR_PORT_DOORBELL + 1, 0xff);
	outw(KRR_PORT_DOORBELL + 2, 0xffff);
	(void)inl(KRR_PORT_DOORBELL);
	(void)inb(KRR_PORT_DOORBELL);
	doorbell(0);
	doorbell(0xffffffffu);
}

/*
 * Interrupts on, then forever bursts of spinning, each followed by a wait for the next
 * timer interrupt. Where KVM emulates ring-0 code a burst outlasts several ticks, so
 * interrupts land at arbitrary instructions; where ring 0 runs natively the hlt bounds
 * the instruction count, and with it the replay time, by the tick rate.
 */
__attribute__((unused)) static void spin_with_ticks(void)
{
	sti();
	for (;;) {
		for (volatile u64 spins = 0; spins < 20000; spins++)
			;
		hlt();
	}
}

#if HOSTILE_KIND == PORT_INPUT
static u64 fnv(const u8 *p, u64 n, u64 h)
{
	for (u64 i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3UL;
	return h;
}

static inline void ins(int down, int words, u16 port, void *dst, u64 count)
{
	if (down)
		__asm__ volatile("std");
	if (words)
		__asm__ volatile("rep insw" : "+D"(dst), "+c"(count) : "d"(port) : "memory");
	else
		__asm__ volatile("rep insb" : "+D"(dst), "+c"(count) : "d"(port) : "memory");
	__asm__ volatile("cld");
}

/*
 * Transmission driven by the UART's THRE interrupt on IRQ4, one byte per interrupt: the
 * handler reads IIR (which clears THRE) and writes the next byte (which raises it again,
 * a new edge while IRQ4 is in service, delivered after the EOI); at the end it turns
 * ETBEI off.
 */
static const char irq_message[] = "port-input: sent byte by byte by the THRE interrupt\n";
static volatile u32 irq_sent, irq4_count;

void irq_hook(u32 vector)
{
	if (vector != VEC_IRQ0 + 4)
		return;
	irq4_count++;
	if ((inb(KRR_PORT_COM1 + 2) & 0x0f) != 0x02)
		return;
	if (irq_message[irq_sent])
		outb(KRR_PORT_COM1, (u8)irq_message[irq_sent++]);
	else
		outb(KRR_PORT_COM1 + 1, 0);
}

static void uart_by_interrupt(void)
{
	outb(KRR_PORT_PIC_MASTER + 1, 0xee); /* IRQ0 and IRQ4 */
	outb(KRR_PORT_COM1 + 4, 0x0b);      /* DTR RTS OUT2 */
	sti();
	outb(KRR_PORT_COM1 + 1, 0x02); /* ETBEI with THR empty: THRE */
	while (inb(KRR_PORT_COM1 + 1) & 0x02)
		;
	cli();
	outb(KRR_PORT_COM1 + 4, 0x03);
	kprintf("port-input: %u IRQ4 interrupts for %u bytes\n", irq4_count, irq_sent);
}

static inline void fw_cfg_select(u16 key) { outw(KRR_PORT_FW_CFG, key); }

/*
 * Port input with interrupts on: a 1 kHz timer ticks while the kernel reads ports in a
 * loop (the interrupts are injected at `in` exits), and string input: `ins`, `rep insb`
 * and `rep insw` from the fw_cfg data port (its bytes change from element to element)
 * and the PIT counter, up and down, across page boundaries and beyond KVM's 1 KiB
 * read-ahead. The console shows checksums of what was read, so replay compares them.
 */
static void port_input(void)
{
	static u8 buf[3 * 4096] __attribute__((aligned(4096)));
	pic_init();
	pit_init(1000);
	sti();
	u64 sum = 0;
	u64 start = ticks;
	while (ticks - start < 100) {
		sum += inb(KRR_PORT_SYSTEM_CONTROL_B);
		sum += inb(KRR_PORT_COM1 + 5);
	}
	cli();
	kprintf("port-input: %lu ticks of port reads\n", ticks - start);
	/* The signature with single `insb`s, then the ID. */
	fw_cfg_select(0);
	u8 sig[5] = {0};
	for (int i = 0; i < 4; i++)
		__asm__ volatile("insb" : : "D"(sig + i), "d"(KRR_PORT_FW_CFG_DATA) : "memory");
	/* Up: the signature, ID and directory selected in turn, 3000 bytes from 0x100 before a
	 * page end (chunks end at the page boundary and after 1 KiB). */
	u64 h = 0xcbf29ce484222325UL;
	for (u16 key = 0; key < 0x20; key++) {
		fw_cfg_select(key == 2 ? 0x19 : key);
		ins(0, key & 1, KRR_PORT_FW_CFG_DATA, buf + 4096 - 0x100, key & 1 ? 600 : 1500);
		h = fnv(buf, sizeof buf, h);
	}
	/* Down, across a page start. */
	fw_cfg_select(0);
	ins(1, 0, KRR_PORT_FW_CFG_DATA, buf + 4096 + 0x80, 0x200);
	h = fnv(buf, sizeof buf, h);
	/* The PIT counter (low and high bytes alternate) with interrupts on. */
	sti();
	for (int i = 0; i < 20; i++) {
		ins(0, 0, KRR_PORT_PIT, buf + i * 100, 2000);
		sum += fnv(buf, sizeof buf, 0);
	}
	cli();
	kprintf("port-input: signature %s, fw_cfg checksum %lx, sum %lx\n", sig, h, sum);
	uart_by_interrupt();
}
#endif

void kmain(void)
{
	uart_init();
	arch_init();
	mm_init();
#if HOSTILE_KIND == RING_GARBAGE
	ring_garbage();
#elif HOSTILE_KIND == RING_HEADER
	ring_header_abuse();
#elif HOSTILE_KIND == DOORBELL_NONSENSE
	doorbell_nonsense();
#elif HOSTILE_KIND == NO_POWEROFF
	kprintf("hostile no-poweroff: spinning forever in kernel mode, interrupts on\n");
	pic_init();
	pit_init(TIMER_HZ);
	spin_with_ticks();
#elif HOSTILE_KIND == PARTIAL_LINE
	kprintf("hostile partial-line: a line without its end, then timer ticks\n");
	pic_init();
	pit_init(TIMER_HZ);
	kprintf("no newline yet");
	/* Every tick's EOI is a port write. */
	spin_with_ticks();
#elif HOSTILE_KIND == PARTIAL_LINE_SILENT
	kprintf("hostile partial-line-silent: a line without its end, then no exit at all\n");
	kprintf("never ended");
	/* Interrupts off and no timer: after this the guest never exits by itself. */
	for (volatile u64 spins = 0;; spins++)
		;
#elif HOSTILE_KIND == PORT_INPUT
	kprintf("hostile port-input: port reads and string input with a 1 kHz timer\n");
	port_input();
#elif HOSTILE_KIND == TRIPLE_FAULT
	kprintf("hostile triple-fault: empty IDT, then ud2\n");
	idt_load_empty();
	__asm__ volatile("ud2");
#else
#error "unknown HOSTILE_KIND"
#endif
	kprintf("hostile: done, powering off\n");
	power_off(0);
}
