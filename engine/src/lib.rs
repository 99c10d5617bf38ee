//! krr-tui engine: everything about a recording that does not need KVM or a terminal.
//!
//! * [`event`]: the event kinds (one definition).
//! * [`state`]: CPU state, memory map, CPUID table, snapshots.
//! * [`trace`]: the recording file format (writer, reader, recovery, statistics).
//! * [`machine`]: the port map and agent ring location replay needs.
//! * [`icount`]: what one instruction counts for, shared by recorder and replay CPU.
//! * [`replay`]: the replay driver (events applied to the replay CPU, divergence checks).
//! * [`symbols`]: guest ELF symbols and DWARF lines (rip to function+offset, file:line).
//! * [`timeline`]: checkpoints and moves in both directions.
//! * [`cpu`]: the software x86-64 CPU that replays ring-0 code.
//! * [`memory`]: guest-physical memory with copy-on-write pages.
//! * [`arch`]: x86-64 architectural constants (control registers, RFLAGS, page tables,
//!   segments), shared with the recorder.
//!
//! The engine has no `unsafe` code.

#![forbid(unsafe_code)]

pub mod arch;
pub mod cpu;
pub mod event;
pub mod guest_kernel;
pub mod icount;
pub mod machine;
pub mod memory;
pub mod replay;
pub mod state;
pub mod symbols;
pub mod timeline;
pub mod trace;
