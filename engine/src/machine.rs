//! The machine the recorder provides, as replay needs to know it: the port map and the
//! agent ring's place. This is the Rust definition of the machine part of
//! `guest-agent/include/krr_agent_abi.h` (the recorder re-exports it next to the ring
//! layout, and a test checks both against the header).

/// Guest-physical address and size of the agent ring region.
pub const RING_GPA: u64 = 0xfd00_0000;
pub const RING_REGION_SIZE: u64 = 0x10_0000;

pub const PORT_DOORBELL: u16 = 0x0520;
/// Any write powers the machine off (isa-debug-exit compatible).
pub const PORT_POWEROFF: u16 = 0x00f4;
/// The 16550 UART of the console: eight ports; offset 0 is the transmit register.
pub const PORT_COM1: u16 = 0x03f8;
pub const PORT_PIC_MASTER: u16 = 0x0020;
pub const PORT_PIC_SLAVE: u16 = 0x00a0;
pub const PORT_PIT: u16 = 0x0040;
/// The PC's system control port B: the timer's channel 2 gate and output.
pub const PORT_SYSTEM_CONTROL_B: u16 = 0x0061;
/// The CMOS real-time clock: index, then data.
pub const PORT_RTC: u16 = 0x0070;
pub const PORT_FW_CFG: u16 = 0x0510;
pub const PORT_FW_CFG_DATA: u16 = 0x0511;
pub const PORT_FW_CFG_DMA: u16 = 0x0514;

/// UART line control register offset and its divisor-latch bit: while it is set, writes
/// to offset 0 program the divisor instead of transmitting.
pub const UART_LCR: u16 = 3;
pub const UART_LCR_DLAB: u8 = 0x80;
/// UART modem control register offset and its loopback bit: while it is set,
/// transmitted bytes go back to the UART's receiver, not to the console.
pub const UART_MCR: u16 = 4;
pub const UART_MCR_LOOP: u8 = 0x10;

/// The agent hook the replay stops at to supply user-memory data: called by the guest
/// kernel right after it copied `len` bytes from user memory into `dst`
/// (`krr_agent_user_read(dst, src, len)`).
pub const HOOK_USER_READ: &str = "krr_agent_user_read";
/// The agent hook the replay stops at to put user bytes back where the kernel is about
/// to read them: called right before a read whose control flow depends on the bytes
/// (`krr_agent_user_source(src, len, string)`: `get_user`, `strncpy_from_user`...).
/// Each call records one user-read event with `dst == src`.
pub const HOOK_USER_SOURCE: &str = "krr_agent_user_source";
/// The agent hook the replay stops at to put a user page-table entry back as user mode
/// left it (accessed and dirty bits): called right before the kernel reads the entry
/// (`krr_agent_pte_read(ptep)`), which it records.
pub const HOOK_PTE_READ: &str = "krr_agent_pte_read";
