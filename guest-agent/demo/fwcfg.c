/*
 * The disk: the fw_cfg file KRR_DISK_FW_CFG_NAME, read with QEMU's fw_cfg DMA interface
 * (docs/specs/fw_cfg.rst): the device moves the bytes straight into guest memory.
 */
#include "kernel.h"
#include "krr_agent_abi.h"

struct fw_cfg_file {
	u32 size;   /* big endian */
	u16 select; /* big endian */
	u16 reserved;
	char name[56];
};

static struct krr_fw_cfg_dma_access dma __attribute__((aligned(16)));
static struct fw_cfg_file dir_entry __attribute__((aligned(16)));
static u32 dir_count;
static int disk_ok;
static u16 disk_select;
static u64 disk_bytes;

static u32 be32(u32 v) { return __builtin_bswap32(v); }
static u16 be16(u16 v) { return (u16)(v >> 8 | v << 8); }
static u64 be64(u64 v) { return (u64)be32((u32)v) << 32 | be32((u32)(v >> 32)); }

/* One DMA request; the device clears `control` (or sets the error bit) when done. */
static int fw_cfg_dma(u32 control, void *buf, u32 len)
{
	volatile struct krr_fw_cfg_dma_access *d = &dma;
	d->control = be32(control);
	d->length = be32(len);
	d->address = be64(buf ? V2P(buf) : 0);
	barrier();
	u64 pa = V2P(&dma);
	outl(KRR_PORT_FW_CFG_DMA, be32((u32)(pa >> 32)));
	outl(KRR_PORT_FW_CFG_DMA + 4, be32((u32)pa)); /* the low half starts the transfer */
	for (u32 spins = 0; spins < 1000000; spins++) {
		u32 c = be32(d->control);
		if (c & KRR_FW_CFG_DMA_ERROR)
			return -1;
		if (c == 0)
			return 0;
	}
	return -1;
}

int disk_init(void)
{
	char sig[4];
	outw(KRR_PORT_FW_CFG, KRR_FW_CFG_SIGNATURE);
	for (int i = 0; i < 4; i++)
		sig[i] = (char)inb(KRR_PORT_FW_CFG_DATA);
	if (memcmp(sig, "QEMU", 4) != 0)
		return -1;
	outw(KRR_PORT_FW_CFG, KRR_FW_CFG_ID);
	u32 features = 0;
	for (int i = 0; i < 4; i++)
		features |= (u32)inb(KRR_PORT_FW_CFG_DATA) << (8 * i);
	if (!(features & 2)) /* no DMA interface */
		return -2;
	if (fw_cfg_dma(KRR_FW_CFG_FILE_DIR << 16 | KRR_FW_CFG_DMA_SELECT | KRR_FW_CFG_DMA_READ, &dir_count, 4))
		return -3;
	u32 count = be32(dir_count);
	if (count > 4096)
		return -3;
	const char *want = KRR_DISK_FW_CFG_NAME;
	usize want_len = strlen(want) + 1;
	for (u32 i = 0; i < count; i++) {
		if (fw_cfg_dma(KRR_FW_CFG_DMA_READ, &dir_entry, sizeof(dir_entry)))
			return -3;
		if (memcmp(dir_entry.name, want, want_len) == 0) {
			disk_select = be16(dir_entry.select);
			disk_bytes = be32(dir_entry.size);
			disk_ok = 1;
			return 0;
		}
	}
	return -4;
}

u64 disk_size(void) { return disk_ok ? disk_bytes : 0; }

/* Read up to len bytes at offset into the kernel buffer buf; returns the count, 0 at the end. */
i64 disk_read(u64 offset, void *buf, u64 len)
{
	if (!disk_ok)
		return -1;
	if (offset >= disk_bytes)
		return 0;
	if (len > disk_bytes - offset)
		len = disk_bytes - offset;
	if (fw_cfg_dma((u32)disk_select << 16 | KRR_FW_CFG_DMA_SELECT | KRR_FW_CFG_DMA_SKIP, NULL, (u32)offset))
		return -1;
	if (fw_cfg_dma(KRR_FW_CFG_DMA_READ, buf, (u32)len))
		return -1;
	return (i64)len;
}
