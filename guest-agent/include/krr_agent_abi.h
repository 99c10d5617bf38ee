/*
 * krr-tui guest agent ABI: the machine the recorder provides and the ring the agent fills.
 *
 * This header is the C definition; recorder/src/agent_ring.rs is the Rust one. A test
 * (recorder/tests/agent_abi.rs) compiles this header with gcc and checks every constant,
 * size and offset against the Rust side. Change both together and bump KRR_RING_VERSION.
 *
 * The ring: a header followed by a record area. The agent appends records at `head`
 * (bytes into the record area) and advances `head` after the record is complete. When a
 * record does not fit, the agent writes KRR_DOORBELL_FULL to KRR_PORT_DOORBELL: the
 * recorder, with the vCPU stopped at that exit, consumes records [0, head) and writes
 * head = 0 (a VMM memory write, recorded, so replay reproduces it). The recorder never
 * touches the ring while the vCPU runs, so every value the agent reads is deterministic.
 * The recorder initialises magic, version, header_size and capacity before the guest
 * starts; a guest that finds no magic (for example under another VMM) disables the agent.
 */
#ifndef KRR_AGENT_ABI_H
#define KRR_AGENT_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
typedef u8 krr_u8;
typedef u16 krr_u16;
typedef u32 krr_u32;
typedef u64 krr_u64;
#else
typedef unsigned char krr_u8;
typedef unsigned short krr_u16;
typedef unsigned int krr_u32;
typedef unsigned long long krr_u64;
#endif

/* ---- The machine ---------------------------------------------------------------- */

/* Guest-physical address and size of the agent ring region (RAM shared with the recorder). */
#define KRR_RING_GPA 0xfd000000ULL
#define KRR_RING_REGION_SIZE 0x100000ULL

/* Port I/O map. */
#define KRR_PORT_DOORBELL 0x0520 /* out: a KRR_DOORBELL_* code (32-bit access) */
#define KRR_PORT_POWEROFF 0x00f4 /* out: power off; compatible with isa-debug-exit */
#define KRR_PORT_COM1 0x03f8     /* 16550 UART, 8 ports */
#define KRR_PORT_PIC_MASTER 0x0020
#define KRR_PORT_PIC_SLAVE 0x00a0
#define KRR_PORT_PIT 0x0040       /* 8254, 4 ports */
#define KRR_PORT_SYSTEM_CONTROL_B 0x0061 /* bit 0: PIT channel 2 gate; bit 5: its output */
#define KRR_PORT_RTC 0x0070       /* CMOS RTC: index, then data at 0x71 */
#define KRR_PORT_FW_CFG 0x0510    /* QEMU-compatible fw_cfg: selector (16-bit) */
#define KRR_PORT_FW_CFG_DATA 0x0511
#define KRR_PORT_FW_CFG_DMA 0x0514 /* big-endian GPA of a struct krr_fw_cfg_dma_access: high at 0x514, low at 0x518 */

/* The disk is the fw_cfg file of this name; reads move it into guest memory by DMA. */
#define KRR_DISK_FW_CFG_NAME "opt/krr/disk"

/* Doorbell codes. */
#define KRR_DOORBELL_FULL 1  /* the ring is full: consume it and reset head */
#define KRR_DOORBELL_FLUSH 2 /* consume it now (before power-off, or on request) */

/* ---- The ring ------------------------------------------------------------------- */

#define KRR_RING_MAGIC 0x5252524bu /* "KRRR" little endian */
#define KRR_RING_VERSION 1u

struct krr_ring_header {
	krr_u32 magic;       /* KRR_RING_MAGIC, written by the recorder */
	krr_u32 version;     /* KRR_RING_VERSION, written by the recorder */
	krr_u32 header_size; /* offset of the record area from the region start */
	krr_u32 capacity;    /* bytes in the record area */
	krr_u64 head;        /* bytes of complete records (agent advances, recorder resets) */
	krr_u64 lost;        /* records the agent could not write (agent increments) */
	krr_u64 reserved[4];
};

/* Every record starts with this; `size` counts the whole record, a multiple of 8. */
struct krr_record_header {
	krr_u16 kind;  /* KRR_REC_* */
	krr_u16 flags; /* kind-specific */
	krr_u32 size;
};

#define KRR_RECORD_ALIGN 8u

enum krr_record_kind {
	KRR_REC_USER_ENTRY = 1,
	KRR_REC_USER_READ = 2,
	KRR_REC_RDTSC = 3,
	KRR_REC_RDRAND = 4,
	KRR_REC_RDSEED = 5,
	KRR_REC_PTE_READ = 6,
};

/* krr_rec_user_entry.entry_kind */
enum krr_entry_kind {
	KRR_ENTRY_SYSCALL = 1,   /* architectural syscall; rip = after it, rflags = before masking */
	KRR_ENTRY_INTERRUPT = 2, /* external interrupt in user mode */
	KRR_ENTRY_EXCEPTION = 3, /* exception in user mode */
};

/* krr_rec_user_entry.flags */
#define KRR_ENTRY_HAS_ERROR_CODE 1u

/* An entry into the kernel from user mode, with the user registers as the kernel found them. */
struct krr_rec_user_entry {
	struct krr_record_header h;
	krr_u32 entry_kind;
	krr_u32 vector;
	krr_u32 error_code;
	krr_u32 reserved;
	krr_u64 cr2;
	krr_u64 gpr[16]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
	krr_u64 rip;
	krr_u64 rflags;
	krr_u64 cs;
	krr_u64 ss;
	krr_u64 fs_base;
	krr_u64 gs_base;
};

/* Data copied from user memory into the kernel buffer `dst`; `len` bytes follow, padded to 8. */
struct krr_rec_user_read {
	struct krr_record_header h;
	krr_u64 dst;
	krr_u64 src;
	krr_u64 len;
	/* krr_u8 data[len]; */
};

/* rdtsc / rdrand / rdseed in kernel mode; flags bit 0 = CF (rdrand, rdseed). */
struct krr_rec_value {
	struct krr_record_header h;
	krr_u64 value;
};

#define KRR_VALUE_CF 1u

/* A page-table entry read by the kernel. */
struct krr_rec_pte_read {
	struct krr_record_header h;
	krr_u64 addr;
	krr_u64 value;
};

/* ---- fw_cfg DMA (QEMU's layout, big endian) -------------------------------------- */

struct krr_fw_cfg_dma_access {
	krr_u32 control; /* big endian */
	krr_u32 length;  /* big endian */
	krr_u64 address; /* big endian */
};

#define KRR_FW_CFG_DMA_ERROR 0x01u
#define KRR_FW_CFG_DMA_READ 0x02u
#define KRR_FW_CFG_DMA_SKIP 0x04u
#define KRR_FW_CFG_DMA_SELECT 0x08u
#define KRR_FW_CFG_SIGNATURE 0x0000
#define KRR_FW_CFG_ID 0x0001
#define KRR_FW_CFG_FILE_DIR 0x0019

#endif /* KRR_AGENT_ABI_H */
