//! The events of a recording: every non-deterministic input the replayed kernel sees.
//!
//! This is the one definition of the event kinds (DESIGN.md section 1). The recorder
//! produces them, the trace format stores them, the replay driver consumes them and the
//! timeline shows them.
//!
//! Positions: `icount` is the number of guest ring-0 instructions retired since the
//! start of the recording, as defined in [`crate::icount`]. For events the recorder
//! captures at a VM exit (port input, MMIO read, VMM and DMA memory writes, kernel-mode
//! interrupts, digests, console output) it is exact. Events that the guest agent writes
//! into its ring (user entries, user-memory reads, PTE reads, rdtsc/rdrand/rdseed) are
//! collected at the next VM exit: they are stored in execution order, and their `icount`
//! is the position of that exit, an upper bound that replay refines.

use serde::{Deserialize, Serialize};

/// A position in a recording: guest ring-0 instructions retired since the start.
pub type Icount = u64;

/// One recorded input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An entry into the kernel from user mode (system call, interrupt, exception).
    /// Replay performs it when the kernel returns to user mode.
    UserEntry(UserEntry),
    /// An interrupt delivered while the guest was in kernel mode.
    KernelInterrupt(KernelInterrupt),
    /// The value an `in` instruction read.
    PortIn(PortIn),
    /// The value a load from an MMIO address read.
    MmioRead(MmioRead),
    /// Guest memory written by a device (DMA) or by the VMM itself.
    MemoryWrite(MemoryWrite),
    /// Data the kernel copied from user memory (copy_from_user, get_user, ...).
    UserRead(UserRead),
    /// A page-table entry the kernel read whose A/D bits user execution may have set.
    PteRead(PteRead),
    /// The result of `rdtsc`, `rdrand` or `rdseed` executed in kernel mode.
    Random(RandomValue),
    /// Bytes the guest wrote to its console.
    Console(ConsoleOutput),
    /// A digest of the machine state at a deterministic point, for divergence checks.
    Digest(Digest),
}

/// The kind of an event, as counted in statistics and shown in the timeline.
///
/// Entries from user mode are split by their kind, memory writes by their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Syscall,
    UserInterrupt,
    UserException,
    KernelInterrupt,
    PortIn,
    MmioRead,
    DmaWrite,
    VmmWrite,
    UserRead,
    PteRead,
    Rdtsc,
    Rdrand,
    Rdseed,
    Console,
    Digest,
}

impl EventKind {
    /// Every kind, in display order.
    pub const ALL: [EventKind; 15] = [
        EventKind::Syscall,
        EventKind::UserInterrupt,
        EventKind::UserException,
        EventKind::KernelInterrupt,
        EventKind::PortIn,
        EventKind::MmioRead,
        EventKind::DmaWrite,
        EventKind::VmmWrite,
        EventKind::UserRead,
        EventKind::PteRead,
        EventKind::Rdtsc,
        EventKind::Rdrand,
        EventKind::Rdseed,
        EventKind::Console,
        EventKind::Digest,
    ];

    /// The snake_case name used in `info --json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Syscall => "syscall",
            EventKind::UserInterrupt => "user_interrupt",
            EventKind::UserException => "user_exception",
            EventKind::KernelInterrupt => "kernel_interrupt",
            EventKind::PortIn => "port_in",
            EventKind::MmioRead => "mmio_read",
            EventKind::DmaWrite => "dma_write",
            EventKind::VmmWrite => "vmm_write",
            EventKind::UserRead => "user_read",
            EventKind::PteRead => "pte_read",
            EventKind::Rdtsc => "rdtsc",
            EventKind::Rdrand => "rdrand",
            EventKind::Rdseed => "rdseed",
            EventKind::Console => "console",
            EventKind::Digest => "digest",
        }
    }

    /// Dense index into per-kind tables (the position in [`EventKind::ALL`]).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::UserEntry(e) => match e.kind {
                EntryKind::Syscall => EventKind::Syscall,
                EntryKind::Interrupt { .. } => EventKind::UserInterrupt,
                EntryKind::Exception { .. } if e.is_syscall_fault() => EventKind::Syscall,
                EntryKind::Exception { .. } => EventKind::UserException,
            },
            Event::KernelInterrupt(_) => EventKind::KernelInterrupt,
            Event::PortIn(_) => EventKind::PortIn,
            Event::MmioRead(_) => EventKind::MmioRead,
            Event::MemoryWrite(w) => match w.source {
                WriteSource::Dma => EventKind::DmaWrite,
                WriteSource::Vmm => EventKind::VmmWrite,
            },
            Event::UserRead(_) => EventKind::UserRead,
            Event::PteRead(_) => EventKind::PteRead,
            Event::Random(r) => match r.instruction {
                RandomInstruction::Rdtsc => EventKind::Rdtsc,
                RandomInstruction::Rdrand => EventKind::Rdrand,
                RandomInstruction::Rdseed => EventKind::Rdseed,
            },
            Event::Console(_) => EventKind::Console,
            Event::Digest(_) => EventKind::Digest,
        }
    }

    /// The position at which the event applies (see the module documentation).
    pub fn icount(&self) -> Icount {
        match self {
            Event::UserEntry(e) => e.icount,
            Event::KernelInterrupt(e) => e.icount,
            Event::PortIn(e) => e.icount,
            Event::MmioRead(e) => e.icount,
            Event::MemoryWrite(e) => e.icount,
            Event::UserRead(e) => e.icount,
            Event::PteRead(e) => e.icount,
            Event::Random(e) => e.icount,
            Event::Console(e) => e.icount,
            Event::Digest(e) => e.icount,
        }
    }

    /// Bytes the event takes in memory: the event and the bytes it carries.
    pub fn memory_bytes(&self) -> u64 {
        let carried = match self {
            Event::MemoryWrite(w) => w.data.capacity(),
            Event::UserRead(u) => u.data.capacity(),
            Event::Console(c) => c.bytes.capacity(),
            _ => 0,
        };
        (std::mem::size_of::<Event>() + carried) as u64
    }

    /// Whether the recorded position is an upper bound (events the guest agent writes
    /// into its ring, stamped with the exit that collected them) rather than exact.
    pub fn position_is_bound(&self) -> bool {
        matches!(
            self,
            Event::UserEntry(_) | Event::UserRead(_) | Event::PteRead(_) | Event::Random(_)
        )
    }

    /// Sets the position (the recorder stamps agent events with the exit that
    /// collected them).
    pub fn set_icount(&mut self, icount: Icount) {
        match self {
            Event::UserEntry(e) => e.icount = icount,
            Event::KernelInterrupt(e) => e.icount = icount,
            Event::PortIn(e) => e.icount = icount,
            Event::MmioRead(e) => e.icount = icount,
            Event::MemoryWrite(e) => e.icount = icount,
            Event::UserRead(e) => e.icount = icount,
            Event::PteRead(e) => e.icount = icount,
            Event::Random(e) => e.icount = icount,
            Event::Console(e) => e.icount = icount,
            Event::Digest(e) => e.icount = icount,
        }
    }
}

/// The event's details, as the UI's events pane and a divergence report show them (its
/// kind is [`Event::kind`]); system calls by number ([`Event::text`] names them).
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_text(f, &|_| None)
    }
}

impl Event {
    /// The event's details, as `Display` gives them, with system calls named by
    /// `syscall_name` where it knows the number (`syscall 3 (getpid) from user rip ...`).
    pub fn text(&self, syscall_name: &dyn Fn(u64) -> Option<String>) -> String {
        struct Text<'a>(&'a Event, &'a dyn Fn(u64) -> Option<String>);
        impl std::fmt::Display for Text<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.write_text(f, self.1)
            }
        }
        Text(self, syscall_name).to_string()
    }

    fn write_text(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        syscall_name: &dyn Fn(u64) -> Option<String>,
    ) -> std::fmt::Result {
        match self {
            Event::UserEntry(u) => {
                let syscall = |f: &mut std::fmt::Formatter<'_>| {
                    let nr = u.regs.gpr[crate::state::gpr::RAX];
                    write!(f, "syscall {nr}")?;
                    match syscall_name(nr) {
                        Some(name) => write!(f, " ({name})"),
                        None => Ok(()),
                    }
                };
                if u.is_syscall_fault() {
                    // `syscall` loaded RIP from LSTAR, whose fetch faulted: the user's
                    // return address is in RCX.
                    syscall(f)?;
                    return write!(
                        f,
                        " from user rip {:#x} (as #PF at {:#x})",
                        u.regs.gpr[crate::state::gpr::RCX],
                        u.regs.rip
                    );
                }
                match u.kind {
                    EntryKind::Syscall => syscall(f)?,
                    EntryKind::Interrupt { vector } => write!(f, "vector {vector:#x}")?,
                    EntryKind::Exception {
                        vector,
                        error_code,
                        cr2,
                    } => {
                        write!(f, "exception {vector}")?;
                        if let Some(e) = error_code {
                            write!(f, " error {e:#x}")?;
                        }
                        if vector == 14 {
                            write!(f, " cr2 {cr2:#x}")?;
                        }
                    }
                }
                write!(f, " from user rip {:#x}", u.regs.rip)
            }
            Event::KernelInterrupt(k) => write!(f, "vector {:#x} at {:#x}", k.vector, k.rip),
            Event::PortIn(p) => write!(f, "port {:#x} size {} = {:#x}", p.port, p.size, p.value),
            Event::MmioRead(m) => write!(f, "gpa {:#x} size {} = {:#x}", m.gpa, m.size, m.value),
            Event::MemoryWrite(w) => write!(f, "{} bytes at gpa {:#x}", w.data.len(), w.gpa),
            Event::UserRead(u) => {
                write!(f, "{} bytes {:#x} -> {:#x}", u.data.len(), u.src, u.dst)
            }
            Event::PteRead(p) => write!(f, "pte at {:#x} = {:#x}", p.addr, p.value),
            Event::Random(r) => write!(f, "{:#x}", r.value),
            Event::Console(c) => write!(f, "{:?}", String::from_utf8_lossy(&c.bytes)),
            Event::Digest(d) => write!(f, "digest rip {:#x}", d.rip),
        }
    }
}

/// How the kernel was entered from user mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// An architectural `syscall`: replay sets RCX, R11, CS/SS from STAR, RIP from LSTAR
    /// and masks RFLAGS with FMASK. `regs.rip` is the user RIP after the instruction and
    /// `regs.rflags` the user RFLAGS before masking.
    Syscall,
    /// An external interrupt taken in user mode, delivered through the IDT.
    Interrupt { vector: u8 },
    /// An exception raised in user mode, delivered through the IDT. `cr2` is meaningful
    /// for page faults only. A `syscall` that this host turns into a page fault at LSTAR
    /// is recorded as that exception, exactly as the kernel received it.
    Exception {
        vector: u8,
        error_code: Option<u32>,
        cr2: u64,
    },
}

/// The user-mode register state at an entry into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegs {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (hardware encoding order).
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    pub fs_base: u64,
    pub gs_base: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub icount: Icount,
    pub kind: EntryKind,
    pub regs: UserRegs,
}

/// Page-fault error code of an instruction fetch by user code from a supervisor page
/// (present, user, instruction fetch).
pub const SYSCALL_FAULT_ERROR_CODE: u32 = 0x15;

impl UserEntry {
    /// Whether this is a `syscall` that arrived as a page fault at LSTAR (the shape
    /// these hosts produce: error code 0x15, CR2 = RIP, interrupts masked). User code
    /// cannot forge it because it cannot clear IF.
    pub fn is_syscall_fault(&self) -> bool {
        matches!(
            self.kind,
            EntryKind::Exception { vector: 14, error_code: Some(SYSCALL_FAULT_ERROR_CODE), cr2 }
                if cr2 == self.regs.rip && self.regs.rflags & RFLAGS_IF == 0
        )
    }
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Where a kernel-mode interrupt was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InjectionPoint {
    /// After exactly `icount` instructions (a counter source was available).
    Icount,
    /// Right after the VM exit recorded as the previous event at the same icount
    /// (a port access, MMIO access or `hlt`), without a counter.
    AfterExit,
    /// At the first instance of `rip` with this register digest and, where the
    /// recorder could read it, this digest of the top of the stack
    /// ([`crate::state::stack_digest`]) (no counter, the vCPU was stopped
    /// asynchronously). `since_position_ns`: the wall time the vCPU ran since the last
    /// recorded position, which bounds the search
    /// ([`crate::icount::signature_search_limit`]).
    Signature {
        regs_digest: u64,
        stack_digest: Option<u64>,
        since_position_ns: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInterrupt {
    /// Instructions retired before the interrupt is taken.
    pub icount: Icount,
    pub vector: u8,
    /// RIP of the instruction the interrupt preempts (checked in replay).
    pub rip: u64,
    pub point: InjectionPoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortIn {
    /// Icount including the `in` instruction.
    pub icount: Icount,
    pub port: u16,
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    pub value: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioRead {
    pub icount: Icount,
    pub gpa: u64,
    pub size: u8,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteSource {
    /// A device moved data into guest memory.
    Dma,
    /// The VMM wrote guest memory (for example the agent ring reset).
    Vmm,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryWrite {
    /// Icount of the exiting instruction after which the write is applied.
    pub icount: Icount,
    pub gpa: u64,
    pub source: WriteSource,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRead {
    pub icount: Icount,
    /// Kernel virtual address of the buffer the data was copied to.
    pub dst: u64,
    /// User virtual address it was copied from.
    pub src: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PteRead {
    pub icount: Icount,
    /// Kernel virtual address of the page-table entry.
    pub addr: u64,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RandomInstruction {
    Rdtsc,
    Rdrand,
    Rdseed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomValue {
    pub icount: Icount,
    pub instruction: RandomInstruction,
    pub value: u64,
    /// CF after `rdrand`/`rdseed` (true: a value was delivered). Always true for `rdtsc`.
    pub success: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOutput {
    pub icount: Icount,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub icount: Icount,
    pub rip: u64,
    pub registers: DigestRegisters,
    /// Hash of the top of the kernel stack ([`crate::state::stack_digest`]), where RSP's
    /// page is kernel memory (the recorder leaves it out otherwise).
    pub stack: Option<u64>,
}

/// The registers a digest checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestRegisters {
    /// The general registers and RFLAGS themselves, so that a divergence names what
    /// differs (format 3).
    Full { gpr: [u64; 16], rflags: u64 },
    /// Only their hash ([`crate::state::regs_digest`]): format 2 recordings.
    Hash(u64),
}

impl DigestRegisters {
    /// Whether `gpr` and `rflags` are the registers recorded.
    pub fn matches(&self, gpr: &[u64; 16], rflags: u64) -> bool {
        match self {
            DigestRegisters::Full { gpr: g, rflags: f } => g == gpr && *f == rflags,
            DigestRegisters::Hash(h) => *h == crate::state::regs_digest(gpr, rflags),
        }
    }
}
