//! What one instruction counts for: the single definition shared by the recorder's
//! counter sources and the replay CPU (DESIGN.md section 2).
//!
//! * Every ring-0 instruction that retires counts 1 when it completes.
//! * An instruction that raises an exception counts 1 although it does not retire
//!   (measured under KVM: a load that page-faults counts once per attempt, before and
//!   after the handler fixes the page; engine/tests/cpu_vs_kvm.rs,
//!   `faulting_instruction_count`); the exception delivery does not count.
//! * A `rep` string instruction counts per chunk of iterations ([`REP_CHUNK`]; for
//!   `rep ins` and `rep outs` see [`string_input_chunk`]).
//! * An interrupt is taken after `icount` instructions have retired: the event's icount
//!   is the count before the first handler instruction.
//! * `hlt` counts 1 when it executes; the wait does not count. `in`, `out`, MMIO
//!   accesses, `iretq`, `sysretq`, `swapgs` count 1 like any other instruction.
//! * Entries from user mode (syscall, interrupt, exception delivery) do not count.
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
//! An interrupt the recorder injected by stopping the vCPU between two deterministic
//! exits is placed by signature (its rip and register digest): replay takes it at the
//! first instance of that state. The recorder also notes how long the vCPU had run
//! since the last recorded position (the last deterministic exit or signature-placed
//! interrupt), which bounds how many instructions replay may search:
//! [`signature_search_limit`]. Without that bound a recording whose signature never
//! matches (corrupt, or hostile) would replay a kernel spin forever.
//!
//! ## KVM's `insn_emulation` statistic as a counter
//!
//! On hosts whose KVM emulates guest ring-0 code, the per-vCPU statistic
//! `insn_emulation` grows by one for every ring-0 instruction KVM emulates, which is
//! every ring-0 instruction. Ring-3 code runs natively and counts nothing, except an
//! instruction that raises a general-protection fault in the host, which KVM emulates
//! (counting 1) before it delivers the guest's exception. Measured from ring 3
//! (engine/tests/cpu_vs_kvm.rs, `user_mode_entries_count_only_ring0_instructions`):
//!
//! * every #GP the guest receives counts 1 (`hlt`, `cli`, `rdmsr`, `mov` from CR0, `in`
//!   from a port the TSS does not allow, a non-canonical address);
//! * `int n` (n other than 3 and 4), which these hosts refuse with #UD, counts 1, whether
//!   the gate allows ring 3 or not;
//! * `syscall` (a page fault at LSTAR here), `int3`, `ud2`, #DE, page faults and
//!   interrupts taken in user mode count nothing;
//! * port I/O from ring 3 that the TSS allows counts 1. It is a VM exit in user mode,
//!   not an entry, and replay does not reproduce user-mode port I/O at all: the guests
//!   recorded here do their port I/O in the kernel.
//!
//! [`KvmCounterModel`] turns raw readings into icounts: it is the one place that knows
//! those extra counts ([`counter_extra_for_entry`]).

use crate::arch::vector;
use crate::event::{EntryKind, UserEntry};

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

    /// Accounts for a kernel entry from user mode seen in the recording; `instruction`
    /// is what the recorder could read at the entry's RIP (see
    /// [`counter_extra_for_entry`]).
    pub fn observe_entry(&mut self, entry: &UserEntry, instruction: &[u8]) {
        self.bias += counter_extra_for_entry(entry, instruction);
    }

    /// The icount corresponding to a raw reading.
    pub fn icount(&self, raw: u64) -> u64 {
        raw.saturating_sub(self.start).saturating_sub(self.bias)
    }
}

/// Raw counts an entry from user mode adds besides ring-0 instructions: 1 for the user
/// instruction KVM emulated when the host saw a general-protection fault (a #GP, or the
/// #UD these hosts give `int n`), 0 otherwise (module documentation). A #UD is told
/// apart by its instruction: `instruction` holds the bytes at the entry's RIP as far as
/// the recorder could read them (empty if it could not: counted as not `int n`).
pub fn counter_extra_for_entry(entry: &UserEntry, instruction: &[u8]) -> u64 {
    match entry.kind {
        EntryKind::Exception {
            vector: vector::GP, ..
        } => 1,
        EntryKind::Exception {
            vector: vector::UD, ..
        } if is_int_n(instruction) => 1,
        _ => 0,
    }
}

/// Whether `bytes` start with `int imm8` (opcode 0xcd), after any prefixes.
fn is_int_n(bytes: &[u8]) -> bool {
    let opcode = bytes.iter().find(|&&b| !is_prefix(b));
    opcode == Some(&0xcd)
}

/// Legacy prefixes and REX.
fn is_prefix(b: u8) -> bool {
    matches!(
        b,
        0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f
    )
}

/// A `rep` string instruction retires in chunks, as KVM's instruction emulator runs it:
/// after each iteration, if the REPE/REPNE condition ends the instruction it completes
/// (RIP advances, count 1); otherwise, if RCX is now a multiple of `REP_CHUNK` (zero
/// included) the chunk retires with RIP still on the instruction (count 1, and an
/// interrupt may be taken there); executed with RCX = 0 it completes at once (count 1).
/// So `rep movs`/`rep stos` with RCX = n count `1 + ceil(n / 1024)`: measured under KVM
/// for n = 0, 1, 3, 1023, 1024, 1025, 2048, 2049, 5000 (counts 1, 2, 2, 2, 2, 3, 3, 4, 6),
/// and `repe cmpsb` ending early counts 1 per chunk started
/// (engine/tests/cpu_vs_kvm.rs, `rep_string_counts`).
pub const REP_CHUNK: u64 = 1024;

/// The chunks of the string port instructions, as KVM's emulator runs them: every
/// element of `rep outs` is a chunk of its own (one port write, one exit), and a chunk
/// of `rep ins` is the elements one port read returns, `string_input_chunk(rdi, size,
/// rcx, df)` of them (one exit). Each chunk counts 1 and retires with RIP still on the
/// instruction, which completes when it is executed with RCX = 0 (count 1): `rep outs`
/// with RCX = n counts `n + 1`, `rep ins` one more than its chunks. Without `rep` they
/// count 1. Measured under KVM (engine/tests/cpu_vs_kvm_linux.rs, `string_port_io`).
///
/// The elements of a `rep ins` chunk: the bytes left in RDI's page (below RDI going
/// down), compared as a number of elements as the emulator does, at most 1024 bytes'
/// worth and at most RCX, and at least one.
pub fn string_input_chunk(rdi: u64, size: usize, rcx: u64, down: bool) -> u64 {
    let in_page = if down {
        rdi & 0xfff
    } else {
        0x1000 - (rdi & 0xfff)
    };
    in_page
        .min(STRING_INPUT_BYTES / size.max(1) as u64)
        .min(rcx)
        .max(1)
}

/// The most bytes one `rep ins` chunk reads from the port (KVM's read-ahead buffer).
pub const STRING_INPUT_BYTES: u64 = 1024;

/// More instructions per nanosecond than any core retires (today's fastest retire a few
/// per cycle at about 6 GHz, under 40 per ns).
pub const MAX_INSTRUCTIONS_PER_NS: u64 = 64;

/// Instructions searched for a signature whatever the measured time (clock granularity,
/// and recordings whose time is zero).
pub const SIGNATURE_SEARCH_FLOOR: u64 = 1 << 24;

/// The most instructions a vCPU can have executed in `ns` nanoseconds of wall time: how
/// far past the last recorded position replay searches for a signature-placed interrupt
/// before it reports a divergence.
pub fn signature_search_limit(ns: u64) -> u64 {
    ns.saturating_mul(MAX_INSTRUCTIONS_PER_NS)
        .saturating_add(SIGNATURE_SEARCH_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UserRegs;

    fn entry(kind: EntryKind) -> UserEntry {
        UserEntry {
            icount: 0,
            kind,
            regs: UserRegs {
                gpr: [0; 16],
                rip: 0x40_1000,
                rflags: 0x202,
                cs: 0x33,
                ss: 0x2b,
                fs_base: 0,
                gs_base: 0,
            },
        }
    }

    fn exception(vector: u8) -> EntryKind {
        EntryKind::Exception {
            vector,
            error_code: None,
            cr2: 0,
        }
    }

    #[test]
    fn general_protection_faults_and_int_n_count_one_each() {
        let int_80 = [0xcd, 0x80];
        let ud2 = [0x0f, 0x0b];
        let mut model = KvmCounterModel::new(1000);
        for (kind, instruction, extra) in [
            (exception(vector::GP), &[][..], 1),
            (exception(vector::UD), &int_80[..], 1),
            // Prefixes do not hide it.
            (exception(vector::UD), &[0x66, 0x48, 0xcd, 0x81][..], 1),
            (exception(vector::UD), &ud2[..], 0),
            // Unread: not counted.
            (exception(vector::UD), &[][..], 0),
            (exception(vector::PF), &int_80[..], 0),
            (exception(vector::BP), &[0xcc][..], 0),
            (EntryKind::Interrupt { vector: 0x20 }, &int_80[..], 0),
            (EntryKind::Syscall, &[0x0f, 0x05][..], 0),
        ] {
            let e = entry(kind);
            assert_eq!(
                counter_extra_for_entry(&e, instruction),
                extra,
                "{kind:?} {instruction:x?}"
            );
            model.observe_entry(&e, instruction);
        }
        // Three extra counts so far: raw 1010 is icount 7.
        assert_eq!(model.icount(1010), 7);
        assert_eq!(model.icount(1000), 0, "never below zero");
    }
}
