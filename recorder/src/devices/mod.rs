//! The recorder's devices, all emulated in user space so that the recorder sees, and
//! records, every value the guest reads and decides the moment of every interrupt.

pub mod fw_cfg;
pub mod pic;
pub mod pit;
pub mod serial;
