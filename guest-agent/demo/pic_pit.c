/* The 8259 PIC pair (IRQ0-15 at vectors 0x20-0x2f) and the 8254 PIT (IRQ0). */
#include "kernel.h"
#include "krr_agent_abi.h"

#define PIC1 KRR_PORT_PIC_MASTER
#define PIC2 KRR_PORT_PIC_SLAVE
#define PIT KRR_PORT_PIT
#define PIT_HZ 1193182

void pic_init(void)
{
	outb(PIC1, 0x11); /* ICW1: edge, cascade, ICW4 */
	outb(PIC2, 0x11);
	outb(PIC1 + 1, VEC_IRQ0);     /* ICW2: vector base */
	outb(PIC2 + 1, VEC_IRQ0 + 8);
	outb(PIC1 + 1, 0x04); /* ICW3: slave on IRQ2 */
	outb(PIC2 + 1, 0x02);
	outb(PIC1 + 1, 0x01); /* ICW4: 8086 mode */
	outb(PIC2 + 1, 0x01);
	outb(PIC1 + 1, 0xfe); /* only IRQ0 (timer) */
	outb(PIC2 + 1, 0xff);
}

/* IRQ7/IRQ15 without their in-service bit are spurious and get no EOI. */
int pic_spurious(u32 vector)
{
	if (vector == VEC_IRQ0 + 7) {
		outb(PIC1, 0x0b);
		return !(inb(PIC1) & 0x80);
	}
	if (vector == VEC_IRQ0 + 15) {
		outb(PIC2, 0x0b);
		if (!(inb(PIC2) & 0x80)) {
			outb(PIC1, 0x20);
			return 1;
		}
	}
	return 0;
}

void pic_eoi(u32 vector)
{
	if (vector >= VEC_IRQ0 + 8)
		outb(PIC2, 0x20);
	outb(PIC1, 0x20);
}

void pit_init(u32 hz)
{
	u32 divisor = (PIT_HZ + hz / 2) / hz;
	outb(PIT + 3, 0x34); /* channel 0, lo/hi, mode 2 (rate generator) */
	outb(PIT, (u8)divisor);
	outb(PIT, (u8)(divisor >> 8));
}
