//! The replay CPU (DESIGN.md section 5): a software x86-64 CPU that executes guest
//! ring-0 code in 64-bit long mode, decoding with iced-x86.
//!
//! # Interface (used by the replay driver)
//!
//! * [`Cpu::new`]`(state, cpuid)`, [`Cpu::set_quirks`], [`Cpu::set_msr_table`],
//!   [`Cpu::state`] / [`Cpu::state_mut`], [`Cpu::icount`] /
//!   [`Cpu::set_icount`]. `Cpu: Clone`; a clone starts with empty caches. After changing
//!   paging or segment state through `state_mut`, call [`Cpu::flush_caches`].
//! * [`Cpu::run`]`(mem, limit) -> `[`Exit`] executes until `icount == limit` or an exit:
//!   - [`Exit::Limit`]: `icount` reached `limit` (returned at once if it already has).
//!   - [`Exit::PortIn`], [`Exit::Rdtsc`], [`Exit::Rdrand`], [`Exit::Rdseed`]: the instruction
//!     is pending (RIP still points at it). [`Cpu::complete_input`]`(value, cf)` writes the
//!     destination, retires it (`icount += 1`) and advances RIP.
//!   - [`Exit::MmioRead`]: the instruction is pending. `complete_input(value, _)` stores
//!     the value; the instruction is executed again with it as the first thing the next
//!     `run` does (it then retires there, or raises an exception, or exits again).
//!   - [`Exit::PortInString`]: an `ins` chunk is pending; [`Cpu::complete_string_input`]
//!     supplies its `count` values, and the chunk executes with them as the first thing
//!     the next `run` does, as after an MMIO read.
//!   - [`Exit::PortOut`], [`Exit::MmioWrite`]: the instruction has retired.
//!   - [`Exit::Hlt`]: `hlt` retired and the CPU is halted; `run` returns `Hlt` again at
//!     once until [`Cpu::inject_interrupt`] clears `halted`.
//!   - [`Exit::ReturnToUser`]: an `iretq` or `sysretq` to CPL3 retired; the state holds
//!     the user state it loaded. Continue with [`Cpu::enter_from_user`].
//!   - [`Exit::Breakpoint`]`(rip)`: the next instruction is at an address in the
//!     breakpoint set ([`Cpu::set_breakpoints`], [`Cpu::add_breakpoint`],
//!     [`Cpu::remove_breakpoint`]). Nothing was executed for it. The next `run` starts
//!     by executing that instruction without reporting the breakpoint again (provided
//!     RIP was not changed in between), so calling `run` again resumes past it.
//!   - [`Exit::Error`]: something replay cannot do (see [`CpuError`]). The state is that
//!     before the offending instruction.
//! * [`Cpu::inject_interrupt`]: deliver an external interrupt through the IDT now (no
//!   instruction counted). The caller decides when interrupts are allowed
//!   ([`Cpu::interrupts_enabled`] tells whether IF is set and no shadow is active).
//! * [`Cpu::enter_from_user`]: perform a recorded user-mode entry architecturally.
//! * [`Cpu::translate`], [`Cpu::read_virtual`], [`Cpu::write_virtual`]: side-effect-free
//!   access through the guest page tables (no A/D updates, no exceptions) for the UI and
//!   gdb.
//!
//! Instruction counting follows [`crate::icount`].
//!
//! # How instructions are executed
//!
//! Decoded instructions are cached by guest-physical address (code is tracked per
//! 64-byte line: a write to a line drops the instructions decoded from it). The
//! commonest forms get a specialised handler at decode time (`exec/fast.rs`); everything
//! else goes through the general dispatch (`exec/mod.rs`), one line per mnemonic into
//! the family modules of `exec/` (`arith`, `muldiv`, `shift_rotate`, `bit`, `data`,
//! `stack`, `control`, `string`, `system`, `io`). The fast handlers take their semantics
//! from the same family functions (the ALU's `ArithOp` types in `exec/arith.rs`, the stack
//! and branch primitives), and engine/tests/cpu_fast_forms.rs runs every fast form
//! through both paths on random inputs. Straight-line runs of fast forms in one code page
//! are cached as blocks (`block.rs`) and run without the per-instruction work of the step
//! loop wherever stepping would do nothing more (see there); both paths give the same
//! results, instruction for instruction.
//!
//! Registers are named by [`crate::state::gpr`] and architectural bits by
//! [`crate::arch`].
//!
//! # Paging
//!
//! 4-level paging with 4 KiB, 2 MiB and 1 GiB (if CPUID advertises them) pages; P, R/W,
//! U/S, NX (with EFER.NXE), CR0.WP, CR4.SMEP/SMAP; A and D bits set as KVM's page walker
//! sets them (A on every level of a successful walk, D on the leaf for writes, nothing on
//! a faulting walk); reserved-bit faults. The TLB is *coherent*: it is flushed whenever a
//! page that served as a page table is written, so every access behaves as a fresh walk
//! of the current tables. This is what the recording host does (its instruction
//! emulator walks the guest tables for every access), so a kernel that changes a PTE
//! without `invlpg` sees the same thing in replay as it saw when recorded.
//!
//! # Exceptions
//!
//! #DE, #UD, #GP, #SS, #NP, #TS and #PF raised by kernel code are delivered through the
//! IDT (64-bit interrupt and trap gates, IST, TSS.RSP0 for entries from CPL3) with their
//! error codes and CR2; the pushed RFLAGS of a fault has RF set. A fault while
//! delivering becomes #DF; a fault while delivering #DF is [`CpuError::TripleFault`].
//!
//! # Deviations copied from the recording host
//!
//! The recordings come from KVM's instruction emulator, which differs from hardware in
//! a few places; replay follows the emulator (each is checked by engine/tests/cpu_vs_kvm.rs
//! or cpu_vs_kvm_linux.rs):
//! a page-crossing write commits its first page before the second may fault; any fault
//! during exception delivery becomes #DF without writing CR2; delivery and `iret` do not
//! set descriptor accessed bits (`mov sreg`, far `jmp` and `lret` do); `lzcnt`/`tzcnt`
//! are bit scans ([`Quirks`]); `fxsave` writes the 32-bit-pointer image with zeros at
//! bytes 416-511 whatever REX.W says, and the `fxsave` family does not check alignment
//! ([`FpuState::to_fxsave_image`], `exec/fpu.rs`); a `rep ins` chunk is one port read of
//! up to 1024 bytes ([`crate::icount::string_input_chunk`]); CPUID must be the table the guest observed, which
//! differs from the one KVM was given (leaf 1 EBX[31:24] even varies with the host CPU).
//! Flags and results the architecture leaves undefined are the recording host's, as
//! its recorder measured them ([`undefined`]).
//!
//! # Instructions
//!
//! Integer ALU with exact flags (add, adc, sub, sbb, cmp, and, or, xor, test, inc, dec,
//! neg, not), shifts and rotates (all counts; undefined cases as the recording host
//! computes them), shld/shrd, mul/imul (1, 2, 3 operands), div/idiv with #DE, bt/bts/btr/btc
//! (register, immediate, memory with large offsets), bsf/bsr/lzcnt/tzcnt, bswap, setcc,
//! cmovcc, jcc, mov/movzx/movsx/movsxd/movnti, lea, xchg, cmpxchg, cmpxchg8b, xadd
//! (lock accepted), cbw/cwde/cdqe/cwd/cdq/cqo, lahf/sahf, clc/stc/cmc/cld/std, push/pop
//! (register, memory, immediate, segment), pushf/popf, call/ret (near, indirect, `ret n`),
//! jmp (near, indirect, far through memory), lret, enter/leave, loop/loope/loopne,
//! jrcxz/jecxz, xlat, string instructions (movs, stos, lods, cmps, scas; rep/repe/repne;
//! 32- and 64-bit addressing), nop/pause/fences/prefetch/clflush/clwb/wbinvd/invd/endbr64,
//! cli/sti (with the interrupt shadow), lgdt/lidt/sgdt/sidt, ltr/str/lldt/sldt,
//! smsw/lmsw/clts, mov to and from CR0/2/3/4/8 and DR0-7, invlpg, invpcid, rdmsr/wrmsr,
//! swapgs, syscall, sysret, iret (to CPL0 and CPL3), cpuid, in/out (immediate and DX
//! ports), ins/outs (rep, both directions, 32-bit addressing), rdtsc, rdrand, rdseed,
//! hlt, ud0/ud1/ud2, mov to segment registers (DS, ES, FS, GS, SS), lar, serialize; the
//! x87/SSE state ([`FpuState`], part of [`CpuState`], so of every clone and checkpoint):
//! fninit, fnclex, fwait, fnstcw, fnstsw, ldmxcsr, stmxcsr, fxsave/fxrstor and their
//! 64-bit forms. `int n`, `int3`, `into`, `int1` give [`CpuError::Unsupported`]; x87
//! arithmetic, SSE/AVX, the xsave family and anything else give
//! [`CpuError::Unimplemented`], which names the instruction and its address: replay
//! reports it as a divergence, never a guess. MSRs the CPU does not model are answered
//! from the recording host's [`MsrTable`] once one is set.

mod block;
mod exec;
pub mod flags;
mod fpu;
mod mmu;
mod msr_table;
mod system;
pub mod undefined;

use std::collections::HashSet;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use thiserror::Error;

use crate::arch::{cpuid as cpuid_bits, efer};
use crate::memory::{GuestMemory, line_bit};
use crate::state::gpr::{RAX, RDX};
use crate::state::{CpuState, CpuidEntry};

pub use fpu::{FpuState, FxsaveImage};
pub use mmu::{Access, PageFault};
pub use msr_table::{
    MEASURED_MSRS, MeasuredMsr, MsrBehaviour, MsrRead, MsrTable, MsrWrite, measured_msr_name,
};

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Limit,
    PortIn {
        port: u16,
        size: u8,
    },
    /// `ins`: `count` values of `size` bytes from `port`, in the order it gives them.
    PortInString {
        port: u16,
        size: u8,
        count: u32,
    },
    PortOut {
        port: u16,
        size: u8,
        value: u32,
    },
    MmioRead {
        gpa: u64,
        size: u8,
    },
    MmioWrite {
        gpa: u64,
        size: u8,
        value: u64,
    },
    Rdtsc,
    Rdrand,
    Rdseed,
    Hlt,
    ReturnToUser,
    Breakpoint(u64),
    Error(CpuError),
}

/// What the replay CPU cannot do. Never a panic: guest input only ever yields these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CpuError {
    /// An instruction the replay CPU does not execute: a divergence, never a guess.
    #[error("unimplemented instruction {mnemonic} at {rip:#x}: {instruction} (bytes {bytes:02x?})")]
    Unimplemented {
        rip: u64,
        bytes: Vec<u8>,
        /// As a disassembler names it (`fld1`, `xsave64`); `(invalid)` for bytes that
        /// decode to nothing.
        mnemonic: String,
        /// The whole instruction in Intel syntax.
        instruction: String,
    },
    #[error("triple fault at {rip:#x} (exception {vector} while delivering a double fault)")]
    TripleFault { rip: u64, vector: u8 },
    #[error("not executing ring-0 long-mode code at {rip:#x} (CPL {cpl}, CS attr {cs_attr:#x})")]
    NotRing0 { rip: u64, cpl: u8, cs_attr: u16 },
    #[error("instruction fetch at {rip:#x} from non-RAM guest-physical address {gpa:#x}")]
    FetchNotRam { rip: u64, gpa: u64 },
    #[error("page-table walk for {linear:#x} read non-RAM guest-physical address {gpa:#x}")]
    PageTableNotRam { linear: u64, gpa: u64 },
    #[error("instruction at {rip:#x} accessed MMIO at {gpa:#x} in an unsupported way ({what})")]
    UnsupportedMmio {
        rip: u64,
        gpa: u64,
        what: &'static str,
    },
    #[error("no instruction is waiting for input")]
    NoPendingInput,
    #[error("the pending input instruction takes {expected} values, not {given}")]
    InputCount { expected: u32, given: usize },
    #[error("unsupported operation at {rip:#x}: {what}")]
    Unsupported { rip: u64, what: String },
    #[error("user-entry event cannot be performed: {0}")]
    BadEntry(String),
}

pub use crate::state::Quirks;

/// For tests: whether `ins` (decoded at IP 0) has a fast form.
#[doc(hidden)]
pub fn has_fast_form(ins: &Instruction) -> bool {
    exec::classify(ins).handler.is_some()
}

/// An instruction waiting for a value from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// `in`: write AL/AX/EAX.
    PortIn { port: u16, size: u8, next_rip: u64 },
    /// `rdtsc` or `rdmsr` of IA32_TSC: write EDX:EAX.
    EdxEax { next_rip: u64 },
    /// `rdrand`/`rdseed` into a register of `size` bytes.
    Random {
        reg: usize,
        size: u8,
        next_rip: u64,
        seed: bool,
    },
    /// A load from MMIO: re-execute with the value.
    Mmio { gpa: u64, size: u8 },
    /// An `ins` chunk: re-execute with its values (`Cpu::string_input`).
    StringIn { port: u16, size: u8, count: u32 },
}

/// An exception raised while executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// CR2 for a page fault.
    pub cr2: u64,
}

/// How an instruction stopped short. Kept small: it is returned by every access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    Exc(Exception),
    /// The instruction waits for input (it has not retired) or cannot run.
    Exit(Box<Exit>),
}

pub(crate) fn exit(e: Exit) -> Fault {
    Fault::Exit(Box::new(e))
}

/// What a retired instruction asks of the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retired {
    Continue,
    PortOut { port: u16, size: u8, value: u32 },
    Hlt,
    ReturnToUser,
}

impl From<Exception> for Fault {
    fn from(e: Exception) -> Self {
        Fault::Exc(e)
    }
}

pub(crate) type R<T> = Result<T, Fault>;

pub(crate) use crate::arch::vector;

pub(crate) fn exc(vector: u8, error_code: Option<u32>) -> Fault {
    Fault::Exc(Exception {
        vector,
        error_code,
        cr2: 0,
    })
}

pub(crate) fn gp0() -> Fault {
    exc(vector::GP, Some(0))
}

pub(crate) fn ud() -> Fault {
    exc(vector::UD, None)
}

/// A decoded-instruction cache entry. The decoded `Instruction` itself, needed only by
/// instructions without a fast form, is kept for those alone, in `Cpu::decoded`.
#[derive(Clone, Copy)]
struct DecodedEntry {
    /// Guest-physical address of the first byte with the cache epoch in bits 52..64
    /// (`EMPTY`: empty). Bumping the epoch empties the cache without touching it.
    tag: u64,
    op: exec::FastOp,
    /// Where the `Instruction` is in `Cpu::decoded` (for `op` without a handler).
    decoded: u32,
}

/// Instructions kept for the general path at most; the decode cache is emptied when
/// more are needed (entries dropped one by one leave theirs behind until then).
const MAX_DECODED: usize = 1 << 14;

const DECODE_CACHE_BITS: u32 = 14;

/// An empty tag of the decode cache and the block cache.
const EMPTY: u64 = u64::MAX;
/// Both caches tag entries with a guest-physical address and an epoch in bits 52..64;
/// moving to a new epoch empties a cache without touching its entries.
const EPOCH_SHIFT: u32 = 52;
/// Instructions at guest-physical addresses from here on are not cached (their address
/// would overlap the epoch bits of the tag).
const TAG_GPA_LIMIT: u64 = 1 << EPOCH_SHIFT;
const MAX_EPOCH: u64 = 0xffe;

/// Moves a cache's `epoch` (kept pre-shifted) to the next one. Returns true when it
/// wrapped around to 0: then every tag must be set to [`EMPTY`].
fn next_epoch(epoch: &mut u64) -> bool {
    let next = (*epoch >> EPOCH_SHIFT) + 1;
    if next > MAX_EPOCH {
        *epoch = 0;
        true
    } else {
        *epoch = next << EPOCH_SHIFT;
        false
    }
}
const FETCHED_UNCACHED: usize = usize::MAX;
const BP_FILTER_WORDS: usize = 64;

/// The replay CPU (see the module documentation).
pub struct Cpu {
    st: CpuState,
    cpuid: Vec<CpuidEntry>,
    icount: u64,
    pending: Option<Pending>,
    mmio_input: Option<(u64, u8, u64)>,
    mmio_write: Option<(u64, u8, u64)>,
    /// The bytes of a pending `ins` chunk, once the driver supplied them.
    string_input: Option<Vec<u8>>,
    /// RIP after the instruction being executed (instructions that jump change it).
    next_rip: u64,
    /// Set by `iret`, which loads RF; every other retiring instruction clears RF.
    keep_rf: bool,
    /// Debug registers DR0-DR7 (stored only; breakpoints are the driver's).
    dr: [u64; 8],
    breakpoints: HashSet<u64>,
    bp_filter: [u64; BP_FILTER_WORDS],
    /// The 64-byte lines of the virtual page `tlb.fetch_vpn` that hold a breakpoint (bit
    /// n: line n), kept with it so that other instructions skip the breakpoint lookup.
    fetch_page_breakpoint_lines: u64,
    skip_breakpoint_at: Option<u64>,
    decode_cache: Vec<DecodedEntry>,
    /// The decoded instructions of cached entries without a fast form (see
    /// [`DecodedEntry::decoded`]); emptied with the cache.
    decoded: Vec<Instruction>,
    blocks: block::Blocks,
    /// Current epoch of the decode cache, pre-shifted to bits 52..64.
    decode_epoch: u64,
    /// The last instruction decoded across a page boundary (not cached).
    uncached: Instruction,
    tlb: mmu::Tlb,
    seen_memory: u64,
    /// The fault of the fast form that stopped a block or a step (see [`exec::Stop`]).
    stop_fault: Option<Fault>,
    /// The memory's code and page-table generations the caches are in step with (a
    /// block stops after a write that moves either).
    seen_code_generation: u64,
    seen_pt_generation: u64,
    max_phys_bits: u32,
    has_1g_pages: bool,
    has_lzcnt: bool,
    has_tzcnt: bool,
    quirks: std::sync::Arc<Quirks>,
    /// What `rdmsr` of MSRs it does not model returned on the recording host, when
    /// known (see [`Cpu::set_msr_table`]).
    msr_table: Option<std::sync::Arc<MsrTable>>,
    /// The recording host's undefined results, compiled from `quirks`.
    undefined: std::sync::Arc<undefined::UndefinedRules>,
    /// Whether instructions get their fast forms (off only in tests that compare the
    /// two paths: see [`Cpu::set_fast_forms`]).
    fast_forms: bool,
}

impl Clone for Cpu {
    fn clone(&self) -> Self {
        Cpu {
            st: self.st.clone(),
            cpuid: self.cpuid.clone(),
            icount: self.icount,
            pending: self.pending,
            mmio_input: self.mmio_input,
            mmio_write: self.mmio_write,
            string_input: self.string_input.clone(),
            next_rip: self.next_rip,
            keep_rf: false,
            dr: self.dr,
            breakpoints: self.breakpoints.clone(),
            bp_filter: self.bp_filter,
            skip_breakpoint_at: self.skip_breakpoint_at,
            fetch_page_breakpoint_lines: self.fetch_page_breakpoint_lines,
            decode_cache: Vec::new(),
            decoded: Vec::new(),
            blocks: block::Blocks::default(),
            decode_epoch: 0,
            uncached: Instruction::default(),
            tlb: mmu::Tlb::new(),
            seen_memory: 0,
            stop_fault: None,
            seen_code_generation: 0,
            seen_pt_generation: 0,
            max_phys_bits: self.max_phys_bits,
            has_1g_pages: self.has_1g_pages,
            has_lzcnt: self.has_lzcnt,
            has_tzcnt: self.has_tzcnt,
            quirks: self.quirks.clone(),
            msr_table: self.msr_table.clone(),
            undefined: self.undefined.clone(),
            fast_forms: self.fast_forms,
        }
    }
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("icount", &self.icount)
            .field("rip", &format_args!("{:#x}", self.st.rip))
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Cpu {
    pub fn new(state: CpuState, cpuid: Vec<CpuidEntry>) -> Cpu {
        let find = |f: u32| {
            cpuid
                .iter()
                .find(|e| e.function == f && e.index == 0)
                .copied()
        };
        let max_phys_bits = find(0x8000_0008)
            .map(|e| e.eax & 0xff)
            .filter(|&b| (32..=52).contains(&b))
            .unwrap_or(46);
        let ext1 = find(0x8000_0001);
        let has_1g_pages = ext1.is_some_and(|e| e.edx & cpuid_bits::EXT1_EDX_PDPE1GB != 0);
        let has_lzcnt = ext1.is_some_and(|e| e.ecx & cpuid_bits::EXT1_ECX_ABM != 0);
        let has_tzcnt = find(7).is_some_and(|e| e.ebx & cpuid_bits::LEAF7_EBX_BMI1 != 0);
        Cpu {
            st: state,
            cpuid,
            icount: 0,
            pending: None,
            mmio_input: None,
            mmio_write: None,
            string_input: None,
            next_rip: 0,
            keep_rf: false,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            breakpoints: HashSet::new(),
            bp_filter: [0; BP_FILTER_WORDS],
            skip_breakpoint_at: None,
            fetch_page_breakpoint_lines: 0,
            decode_cache: Vec::new(),
            decoded: Vec::new(),
            blocks: block::Blocks::default(),
            decode_epoch: 0,
            uncached: Instruction::default(),
            tlb: mmu::Tlb::new(),
            seen_memory: 0,
            stop_fault: None,
            seen_code_generation: 0,
            seen_pt_generation: 0,
            max_phys_bits,
            has_1g_pages,
            has_lzcnt,
            has_tzcnt,
            quirks: Default::default(),
            msr_table: None,
            undefined: Default::default(),
            fast_forms: true,
        }
    }

    /// For tests: with `false`, every instruction decoded from now on takes the general
    /// path (no fast forms, so no blocks either), which must give the same results
    /// (engine/tests/cpu_fast_forms.rs compares them). Drops the decoded instructions.
    #[doc(hidden)]
    pub fn set_fast_forms(&mut self, on: bool) {
        self.fast_forms = on;
        self.flush_decode_cache();
    }

    /// Reproduce the recording host's deviations (the recording's [`Quirks`]).
    pub fn set_quirks(&mut self, quirks: Quirks) {
        self.undefined = std::sync::Arc::new(undefined::UndefinedRules::new(&quirks.undefined));
        self.quirks = std::sync::Arc::new(quirks);
        // Blocks leave out flags by the rules (`block.rs`).
        self.blocks.invalidate_all();
    }

    pub fn quirks(&self) -> &Quirks {
        &self.quirks
    }

    /// Answer `rdmsr` and `wrmsr` of the MSRs the CPU does not model from `table`, the
    /// recording host's measurements: a read returns the value the guest wrote where
    /// the host keeps writes, else the measured value or #GP; a write faults, is
    /// ignored or is kept as the host did. An MSR the table does not cover is an
    /// [`Exit::Error`]: replay cannot know what the host did. Replay always sets one (the
    /// recording's, empty for recordings older than format 5); a CPU without a table
    /// (tests of the CPU alone) raises #GP for both.
    pub fn set_msr_table(&mut self, table: MsrTable) {
        self.msr_table = Some(std::sync::Arc::new(table));
    }

    pub fn state(&self) -> &CpuState {
        &self.st
    }

    /// Mutable state. Call [`Cpu::flush_caches`] after changing CR0/CR3/CR4/EFER.
    pub fn state_mut(&mut self) -> &mut CpuState {
        &mut self.st
    }

    pub fn icount(&self) -> u64 {
        self.icount
    }

    pub fn set_icount(&mut self, icount: u64) {
        self.icount = icount;
    }

    pub fn cpuid_table(&self) -> &[CpuidEntry] {
        &self.cpuid
    }

    /// Drops the TLB and the decoded-instruction cache.
    pub fn flush_caches(&mut self) {
        self.tlb.flush_all();
        self.flush_decode_cache();
    }

    /// Empties the decode cache in O(1) (a new epoch) except once every few thousand
    /// flushes, when the epoch wraps.
    fn flush_decode_cache(&mut self) {
        self.blocks.invalidate_all();
        self.decoded.clear();
        if next_epoch(&mut self.decode_epoch) {
            for e in self.decode_cache.iter_mut() {
                e.tag = EMPTY;
            }
        }
    }

    #[inline]
    fn decode_index(gpa: u64) -> usize {
        ((gpa ^ (gpa >> DECODE_CACHE_BITS)) as usize) & ((1 << DECODE_CACHE_BITS) - 1)
    }

    /// Drops the decoded instructions that overlap the 64-byte lines `mask` of the page
    /// at `page`. An instruction overlapping a line starts in it or at most 14 bytes
    /// before it (instructions crossing into a page are never cached).
    fn invalidate_code_lines(&mut self, page: u64, mut mask: u64) {
        if mask != 0 {
            self.blocks.invalidate_all();
        }
        while mask != 0 {
            let line = page + 64 * mask.trailing_zeros() as u64;
            mask &= mask - 1;
            let first = if line == page { line } else { line - 14 };
            for a in first..line + 64 {
                let e = &mut self.decode_cache[Self::decode_index(a)];
                if e.tag == a | self.decode_epoch {
                    e.tag = EMPTY;
                }
            }
        }
    }

    /// Whether an external interrupt may be taken now (IF set, no interrupt shadow).
    pub fn interrupts_enabled(&self) -> bool {
        self.st.rflags & flags::IF != 0 && !self.st.interrupt_shadow
    }

    /// Whether an instruction waits for [`Cpu::complete_input`].
    pub fn has_pending_input(&self) -> bool {
        self.pending.is_some() && self.mmio_input.is_none()
    }

    // ---- breakpoints ----

    fn bp_bit(addr: u64) -> (usize, u64) {
        let h = addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
        ((h as usize / 64) % BP_FILTER_WORDS, 1 << (h % 64))
    }

    fn rebuild_bp_filter(&mut self) {
        self.tlb.fetch_vpn = u64::MAX;
        self.bp_filter = [0; BP_FILTER_WORDS];
        for &a in &self.breakpoints {
            let (w, b) = Self::bp_bit(a);
            self.bp_filter[w] |= b;
        }
    }

    pub fn set_breakpoints(&mut self, addrs: impl IntoIterator<Item = u64>) {
        self.breakpoints = addrs.into_iter().collect();
        self.rebuild_bp_filter();
    }

    pub fn add_breakpoint(&mut self, addr: u64) {
        self.breakpoints.insert(addr);
        self.tlb.fetch_vpn = u64::MAX;
        let (w, b) = Self::bp_bit(addr);
        self.bp_filter[w] |= b;
    }

    pub fn remove_breakpoint(&mut self, addr: u64) {
        if self.breakpoints.remove(&addr) {
            self.rebuild_bp_filter();
        }
    }

    pub fn breakpoints(&self) -> &HashSet<u64> {
        &self.breakpoints
    }

    /// Whether a breakpoint lies on the 64-byte line of `rip` in the fetch page (`rip`
    /// must be in the fetch page).
    #[inline(always)]
    fn breakpoint_on_line(&self, rip: u64) -> bool {
        self.fetch_page_breakpoint_lines & line_bit(rip) != 0
    }

    #[inline(always)]
    fn breakpoint_hit(&self, rip: u64) -> bool {
        if rip >> 12 == self.tlb.fetch_vpn && !self.breakpoint_on_line(rip) {
            return false;
        }
        let (w, b) = Self::bp_bit(rip);
        self.bp_filter[w] & b != 0 && self.breakpoints.contains(&rip)
    }

    // ---- input completion ----

    /// Supplies the value an exiting input instruction waits for (see [`Exit`]). `cf` is
    /// the carry flag result of `rdrand`/`rdseed` (ignored otherwise).
    pub fn complete_input(&mut self, value: u64, cf: bool) -> Result<(), CpuError> {
        let p = self.pending.ok_or(CpuError::NoPendingInput)?;
        match p {
            Pending::PortIn { size, next_rip, .. } => {
                let v = value & flags::mask(size as usize);
                let rax = &mut self.st.gpr[RAX];
                *rax = match size {
                    1 => (*rax & !0xff) | v,
                    2 => (*rax & !0xffff) | v,
                    _ => v & 0xffff_ffff,
                };
                self.retire_pending(next_rip);
            }
            Pending::EdxEax { next_rip } => {
                self.st.gpr[RAX] = value & 0xffff_ffff;
                self.st.gpr[RDX] = value >> 32;
                self.retire_pending(next_rip);
            }
            Pending::Random {
                reg,
                size,
                next_rip,
                ..
            } => {
                let v = value & flags::mask(size as usize);
                let r = &mut self.st.gpr[reg];
                *r = if size == 2 { (*r & !0xffff) | v } else { v };
                self.st.rflags &= !flags::STATUS;
                if cf {
                    self.st.rflags |= flags::CF;
                }
                self.retire_pending(next_rip);
            }
            Pending::Mmio { gpa, size } => {
                if self.mmio_input.is_some() {
                    return Err(CpuError::NoPendingInput);
                }
                self.mmio_input = Some((gpa, size, value & flags::mask(size as usize)));
            }
            Pending::StringIn { .. } => return Err(CpuError::NoPendingInput),
        }
        Ok(())
    }

    /// Supplies the values a pending `ins` chunk waits for ([`Exit::PortInString`]), one
    /// per element in the order the port gave them.
    pub fn complete_string_input(&mut self, values: &[u32]) -> Result<(), CpuError> {
        let Some(Pending::StringIn { size, count, .. }) = self.pending else {
            return Err(CpuError::NoPendingInput);
        };
        if self.string_input.is_some() {
            return Err(CpuError::NoPendingInput);
        }
        if values.len() != count as usize {
            return Err(CpuError::InputCount {
                expected: count,
                given: values.len(),
            });
        }
        let bytes = values
            .iter()
            .flat_map(|v| v.to_le_bytes()[..size as usize].to_vec())
            .collect();
        self.string_input = Some(bytes);
        Ok(())
    }

    fn retire_pending(&mut self, next_rip: u64) {
        self.pending = None;
        self.st.rip = next_rip;
        self.st.interrupt_shadow = false;
        self.icount += 1;
    }

    // ---- the run loop ----

    /// Makes the caches valid for `mem` (a different memory object drops them all).
    #[inline]
    fn sync_caches(&mut self, mem: &GuestMemory) {
        if self.decode_cache.is_empty() {
            // Allocated once per CPU object; later flushes only change the epoch.
            self.decode_cache = vec![
                DecodedEntry {
                    tag: EMPTY,
                    op: exec::FastOp::generic(0),
                    decoded: 0,
                };
                1 << DECODE_CACHE_BITS
            ];
            self.blocks.ensure_allocated();
        }
        if self.seen_memory != mem.instance_id() {
            self.seen_memory = mem.instance_id();
            self.tlb.flush_all();
            self.flush_decode_cache();
            self.seen_code_generation = mem.code_generation();
            self.seen_pt_generation = mem.pt_generation();
        }
        self.sync_generations(mem);
    }

    /// Drops cached decodes of code lines that were written, and translations after
    /// page tables were written.
    #[inline]
    fn sync_generations(&mut self, mem: &GuestMemory) {
        if self.seen_code_generation != mem.code_generation() {
            self.sync_code(mem);
        }
        if self.seen_pt_generation != mem.pt_generation() {
            self.seen_pt_generation = mem.pt_generation();
            self.tlb.flush_all();
        }
    }

    #[cold]
    fn sync_code(&mut self, mem: &GuestMemory) {
        let seen = std::mem::replace(&mut self.seen_code_generation, mem.code_generation());
        match mem.code_writes_since(seen) {
            Some(writes) => {
                for (page, mask) in writes {
                    self.invalidate_code_lines(page, mask);
                }
            }
            None => self.flush_decode_cache(),
        }
    }

    /// An error if the CPU is not in 64-bit ring 0 (the only mode replayed).
    fn mode_error(&self) -> Option<Exit> {
        let cs = &self.st.seg[crate::state::seg::CS];
        if self.st.cpl() != 0 || !cs.long_mode() || self.st.efer & efer::LMA == 0 {
            return Some(Exit::Error(CpuError::NotRing0 {
                rip: self.st.rip,
                cpl: self.st.cpl(),
                cs_attr: cs.attr,
            }));
        }
        None
    }

    /// Executes until `icount == limit` or an exit (see the module documentation).
    pub fn run(&mut self, mem: &mut GuestMemory, limit: u64) -> Exit {
        self.sync_caches(mem);
        if let Some(e) = self.mode_error() {
            return e;
        }
        if let Some(p) = self.pending {
            match p {
                Pending::Mmio { .. } if self.mmio_input.is_some() => {
                    self.pending = None;
                    if let Some(e) = self.step(mem) {
                        return e;
                    }
                }
                Pending::Mmio { gpa, size } => return Exit::MmioRead { gpa, size },
                Pending::StringIn { .. } if self.string_input.is_some() => {
                    self.pending = None;
                    if let Some(e) = self.step(mem) {
                        return e;
                    }
                }
                Pending::PortIn { .. }
                | Pending::EdxEax { .. }
                | Pending::Random { .. }
                | Pending::StringIn { .. } => {
                    return self.pending_exit(p);
                }
            }
        }
        // Only `hlt` halts, and it ends the run; the breakpoint set cannot change during it.
        if self.st.halted {
            return if self.icount >= limit {
                Exit::Limit
            } else {
                Exit::Hlt
            };
        }
        let any_breakpoints = !self.breakpoints.is_empty();
        loop {
            if self.icount >= limit {
                return Exit::Limit;
            }
            if self.seen_code_generation != mem.code_generation()
                || self.seen_pt_generation != mem.pt_generation()
            {
                self.sync_generations(mem);
            }
            let rip = self.st.rip;
            if any_breakpoints && self.breakpoint_hit(rip) && self.skip_breakpoint_at != Some(rip) {
                self.skip_breakpoint_at = Some(rip);
                return Exit::Breakpoint(rip);
            }
            if self.skip_breakpoint_at.is_some() {
                self.skip_breakpoint_at = None;
            }
            match self.run_blocks(mem, limit, any_breakpoints) {
                Some(Some(e)) => return e,
                Some(None) => continue,
                None => {}
            }
            if let Some(e) = self.step(mem) {
                return e;
            }
        }
    }

    fn pending_exit(&self, p: Pending) -> Exit {
        match p {
            Pending::PortIn { port, size, .. } => Exit::PortIn { port, size },
            Pending::EdxEax { .. } => Exit::Rdtsc,
            Pending::Random { seed: false, .. } => Exit::Rdrand,
            Pending::Random { seed: true, .. } => Exit::Rdseed,
            Pending::Mmio { gpa, size } => Exit::MmioRead { gpa, size },
            Pending::StringIn { port, size, count } => Exit::PortInString { port, size, count },
        }
    }

    /// Executes one instruction (or delivers the exception it raises). Returns an exit
    /// if the run loop must stop.
    #[inline(always)]
    fn step(&mut self, mem: &mut GuestMemory) -> Option<Exit> {
        let fetched = match self.fetch_hit() {
            Some(idx) => Ok(idx),
            None => self.fetch(mem),
        };
        let idx = match fetched {
            Ok(idx) => idx,
            Err(f) => return self.handle_fault(mem, f),
        };
        let op = match self.decode_cache.get(idx) {
            Some(e) => e.op,
            None => exec::FastOp::generic(self.uncached.len()),
        };
        self.next_rip = self.st.rip.wrapping_add(op.len as u64);
        let shadow = self.st.interrupt_shadow;
        self.st.interrupt_shadow = false;
        let result = match op.handler {
            Some(handler) => {
                // A fast form moves RIP itself; stopping after it (`Stop::After`) is
                // what retiring one instruction does anyway.
                match handler(self, mem, &exec::BlockOp { handler, op }, &[]) {
                    Err(stop) if stop.faulted() => Err(self.take_stop_fault()),
                    _ => {
                        self.next_rip = self.st.rip;
                        Ok(Retired::Continue)
                    }
                }
            }
            None => {
                let ins = match self.decode_cache.get(idx) {
                    Some(e) => self.decoded[e.decoded as usize],
                    None => self.uncached,
                };
                self.exec(mem, &ins)
            }
        };
        match result {
            Ok(retired) => {
                if self.keep_rf {
                    // iret loaded RF: it stays for the next instruction.
                    self.keep_rf = false;
                } else if self.st.rflags & flags::RF != 0 {
                    self.st.rflags &= !flags::RF;
                }
                self.st.rip = self.next_rip;
                self.icount += 1;
                if self.mmio_input.is_some() || self.mmio_write.is_some() {
                    self.mmio_input = None;
                    if let Some((gpa, size, value)) = self.mmio_write.take() {
                        return Some(Exit::MmioWrite { gpa, size, value });
                    }
                }
                match retired {
                    Retired::Continue => None,
                    Retired::PortOut { port, size, value } => {
                        Some(Exit::PortOut { port, size, value })
                    }
                    Retired::Hlt => Some(Exit::Hlt),
                    Retired::ReturnToUser => Some(Exit::ReturnToUser),
                }
            }
            Err(f) => {
                self.st.interrupt_shadow = shadow;
                self.mmio_write = None;
                self.mmio_input = None;
                self.handle_fault(mem, f)
            }
        }
    }

    /// The fault a fast form left in `stop_fault` when it stopped.
    fn take_stop_fault(&mut self) -> Fault {
        self.stop_fault
            .take()
            .unwrap_or_else(|| self.unsupported("a fast form stopped without its fault"))
    }

    fn handle_fault(&mut self, mem: &mut GuestMemory, f: Fault) -> Option<Exit> {
        match f {
            Fault::Exc(e) => {
                // The faulting instruction counts 1 (crate::icount).
                self.icount += 1;
                match self.deliver_exception(mem, e) {
                    Ok(()) => None,
                    Err(err) => Some(Exit::Error(err)),
                }
            }
            Fault::Exit(e) => {
                if let Exit::MmioRead { gpa, size } = *e {
                    self.pending = Some(Pending::Mmio { gpa, size });
                }
                Some(*e)
            }
        }
    }

    /// The decode-cache index of the instruction at RIP when it is cached and RIP is in
    /// the page instructions were last fetched from (the common case; [`Self::fetch`]
    /// handles the rest).
    #[inline(always)]
    fn fetch_hit(&self) -> Option<usize> {
        let rip = self.st.rip;
        if rip >> 12 != self.tlb.fetch_vpn {
            return None;
        }
        let gpa = self.tlb.fetch_page | (rip & 0xfff);
        let idx = Self::decode_index(gpa);
        (self.decode_cache.get(idx)?.tag == gpa | self.decode_epoch).then_some(idx)
    }

    /// Decodes the instruction at RIP into the decoded-instruction cache and returns
    /// its index there, or [`FETCHED_UNCACHED`] for an instruction that crosses a page
    /// (left in `self.uncached`). Returning an index rather than the instruction keeps
    /// the 40-byte instruction out of the `Result`.
    #[inline(never)]
    fn fetch(&mut self, mem: &mut GuestMemory) -> R<usize> {
        let rip = self.st.rip;
        let gpa = if rip >> 12 == self.tlb.fetch_vpn {
            self.tlb.fetch_page | (rip & 0xfff)
        } else {
            let g = self.translate_access(mem, rip, Access::Fetch)?;
            self.tlb.fetch_vpn = rip >> 12;
            self.tlb.fetch_page = g & !0xfff;
            self.fetch_page_breakpoint_lines = self
                .breakpoints
                .iter()
                .filter(|&&a| a >> 12 == rip >> 12)
                .fold(0, |lines, &a| lines | line_bit(a));
            g
        };
        if let Some(idx) = self.decode_in_page(mem, rip, gpa)? {
            return Ok(idx);
        }
        // The instruction crosses into the next page: translate it (with its own fetch
        // checks) and decode from both. Such instructions are not cached.
        let mut buf = [0u8; 15];
        let in_page = (4096 - (rip & 0xfff) as usize).min(15);
        if mem.read(gpa, &mut buf[..in_page]).is_err() {
            return Err(exit(Exit::Error(CpuError::FetchNotRam { rip, gpa })));
        }
        let next = (rip | 0xfff).wrapping_add(1);
        let gpa2 = self.translate_access(mem, next, Access::Fetch)?;
        if mem.read(gpa2, &mut buf[in_page..]).is_err() {
            return Err(exit(Exit::Error(CpuError::FetchNotRam { rip, gpa: gpa2 })));
        }
        let mut dec = Decoder::with_ip(64, &buf, 0, DecoderOptions::NONE);
        dec.decode_out(&mut self.uncached);
        Ok(FETCHED_UNCACHED)
    }

    /// The decode-cache index of the instruction at `rip` (guest-physical `gpa`),
    /// decoding it into the cache if needed; [`FETCHED_UNCACHED`] for one that is not
    /// cached (left in `self.uncached`); `None` for one that crosses into the next page.
    fn decode_in_page(&mut self, mem: &mut GuestMemory, rip: u64, gpa: u64) -> R<Option<usize>> {
        let idx = Self::decode_index(gpa);
        if self.decode_cache[idx].tag == gpa | self.decode_epoch {
            return Ok(Some(idx));
        }
        let mut buf = [0u8; 15];
        let in_page = (4096 - (rip & 0xfff) as usize).min(15);
        if mem.read(gpa, &mut buf[..in_page]).is_err() {
            return Err(exit(Exit::Error(CpuError::FetchNotRam { rip, gpa })));
        }
        let mut ins = Instruction::default();
        let mut dec = Decoder::with_ip(64, &buf[..in_page], 0, DecoderOptions::NONE);
        dec.decode_out(&mut ins);
        if dec.last_error() == iced_x86::DecoderError::NoMoreBytes {
            return Ok(None);
        }
        if gpa >= TAG_GPA_LIMIT {
            self.uncached = ins;
            return Ok(Some(FETCHED_UNCACHED));
        }
        mem.mark_code(gpa, ins.len());
        let op = if self.fast_forms {
            exec::classify(&ins)
        } else {
            exec::FastOp::generic(ins.len())
        };
        let mut decoded = 0;
        if op.handler.is_none() {
            if self.decoded.len() >= MAX_DECODED {
                self.flush_decode_cache();
            }
            decoded = self.decoded.len() as u32;
            self.decoded.push(ins);
        }
        self.decode_cache[idx] = DecodedEntry {
            tag: gpa | self.decode_epoch,
            op,
            decoded,
        };
        Ok(Some(idx))
    }

    /// An error for an instruction the CPU does not implement.
    pub(crate) fn unimplemented(&self, mem: &GuestMemory, ins: &Instruction) -> Fault {
        use iced_x86::Formatter;
        let mut bytes = vec![0u8; ins.len()];
        let _ = self.read_virtual(mem, self.st.rip, &mut bytes);
        let mut formatter = iced_x86::IntelFormatter::new();
        formatter.options_mut().set_rip_relative_addresses(true);
        let (mut mnemonic, mut instruction) = (String::new(), String::new());
        if ins.code() == Code::INVALID {
            mnemonic.push_str("(invalid)");
            instruction.push_str("(invalid)");
        } else {
            formatter.format_mnemonic(ins, &mut mnemonic);
            formatter.format(ins, &mut instruction);
        }
        exit(Exit::Error(CpuError::Unimplemented {
            rip: self.st.rip,
            bytes,
            mnemonic,
            instruction,
        }))
    }

    pub(crate) fn unsupported(&self, what: impl Into<String>) -> Fault {
        exit(Exit::Error(CpuError::Unsupported {
            rip: self.st.rip,
            what: what.into(),
        }))
    }
}
