//! The replay driver: restores the initial snapshot and executes the recorded kernel in
//! the replay CPU, applying every event where DESIGN.md section 1 says.
//!
//! Where each event is replayed:
//! * user entries: [`Replay::on_return_to_user`] (when the kernel returns to user mode);
//! * kernel-mode interrupts: [`Replay::apply_due`] (at their icount);
//! * port input, MMIO reads, rdtsc/rdrand/rdseed: [`Replay::on_input`] (at the instruction);
//!   an `ins` chunk takes one port-input event per element, all recorded at its exit:
//!   [`Replay::on_string_input`];
//! * DMA and VMM writes, console output, digests: [`Replay::after_exit`] (at the exit);
//! * user-memory data: [`Replay::on_breakpoint`] (at the agent hook).
//!
//! Events are consumed strictly in recorded order; anything else is a divergence,
//! reported with the event number, icount, expected against actual, and the last
//! instructions executed (DESIGN.md section 7).

mod console;
mod divergence;
pub mod entry_tasks;
mod events;
mod explain;
mod inspect;

pub use console::ConsoleLog;
pub use divergence::{Cause, Difference, Divergence};
pub use events::{APPLIED_BYTES_PER_EVENT, EventRef, Events};
pub use inspect::format_instruction;

use crate::cpu::{Cpu, Exit};
use crate::event::{
    DigestRegisters, Event, Icount, InjectionPoint, KernelInterrupt, RandomInstruction,
};
use crate::machine::{
    HOOK_PTE_READ, HOOK_USER_READ, HOOK_USER_SOURCE, PORT_COM1, PORT_POWEROFF, UART_LCR,
    UART_LCR_DLAB, UART_MCR, UART_MCR_LOOP,
};
use crate::memory::GuestMemory;
use crate::state::{CounterSourceKind, gpr};
use crate::trace::{CacheUsage, EventChunk, Header, RecordingReader, TraceError};
use entry_tasks::{EntryTasks, TaskReader};
use events::{INDEX_BYTES_PER_CHUNK, RecordedEvents};
use std::path::Path;
use std::sync::Arc;

/// Errors opening a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("the recording's snapshot does not fit its machine: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// The recording holds something this build cannot replay faithfully: refused
    /// rather than replayed wrongly.
    #[error("this build cannot replay the recording: {0}")]
    Unsupported(String),
    /// The recording needs more memory than replay may hold of it ([`ReplayLimits`]).
    #[error("the recording is too large to replay: {0}")]
    OverBudget(String),
}

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The end of the recording.
    End,
    /// Just before the instruction that would make `icount` exceed this.
    Icount(Icount),
    /// Right after event N was applied.
    Event(u64),
}

/// How the recording ended, as replay reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The guest powered off, as it did when recorded.
    PowerOff,
    /// The recording stops here (it was interrupted, or cut short).
    EndOfRecording,
}

/// Why [`Replay::run`] stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    Reached(Target),
    Finished(End),
    /// A breakpoint the caller set (not an agent hook).
    Breakpoint(u64),
    Diverged(Box<Divergence>),
}

/// The machine state at the start of the recording (shared, copy-on-write pages).
#[derive(Clone)]
struct Initial {
    cpu: Cpu,
    mem: GuestMemory,
}

/// The decoded chunk holding the next event to consume: a replay's own handle on the
/// shared cache, so that reading its events in order takes no lock. Not copied with the
/// replay (a checkpoint holds no chunk; the copy takes it from the cache when it runs).
#[derive(Default)]
struct FrontChunk(Option<(usize, Arc<EventChunk>)>);

impl Clone for FrontChunk {
    fn clone(&self) -> Self {
        FrontChunk(None)
    }
}

/// A replay of one recording. Cloning is cheap (memory pages are shared copy-on-write,
/// events are shared and read from the file through a bounded cache): a clone is a
/// checkpoint.
#[derive(Clone)]
pub struct Replay {
    pub(crate) cpu: Cpu,
    pub(crate) mem: GuestMemory,
    header: Arc<Header>,
    events: Arc<RecordedEvents>,
    front_chunk: FrontChunk,
    /// Number of the next event to consume.
    next: u64,
    /// The next kernel-mode interrupt at or after `next`, once found: its number and
    /// the event.
    next_interrupt: Option<(u64, KernelInterrupt)>,
    /// Events before this number, from `next` on, were searched for the next
    /// interrupt: none is before it unless `next_interrupt` is found. Searched a chunk
    /// at a time, as replay gets there, so opening does not read every event.
    interrupt_searched: u64,
    /// The earliest icount of the next interrupt: its own once found, else the one
    /// the index records for the first event not searched; None when none is left.
    interrupt_bound: Option<Icount>,
    /// The agent's hooks the guest has, where replay supplies what user mode did.
    hooks: AgentHooks,
    /// Breakpoints the caller set.
    user_breakpoints: Vec<u64>,
    /// Console bytes replayed so far, and how many of them were already compared.
    console: ConsoleLog,
    console_checked: usize,
    /// The UART's line and modem control registers as the guest wrote them: bytes
    /// written to offset 0 are console output unless the divisor latch or loopback is on.
    uart_lcr: u8,
    uart_mcr: u8,
    /// Final icount of a complete recording.
    final_icount: Option<Icount>,
    /// The recording's icounts are exact (it was made with an instruction counter).
    /// Without one, events are placed by the exits and signatures they carry.
    exact: bool,
    /// Replay has just handled an exit and not run since: events the recorder
    /// captured at that exit are due (positional mode).
    at_exit: bool,
    /// ...and that exit was an `out` (where the recorder takes digests, applies DMA and
    /// VMM writes and flushes console output).
    at_out: bool,
    /// Deterministic exits (port and MMIO accesses, `hlt`) so far: the position of
    /// events in a recording made without a counter (see [`crate::icount`]).
    exit_ordinal: u64,
    /// Address of a pending signature-placed interrupt (positional mode).
    signature_rip: Option<u64>,
    /// The CPU's icount at the last recorded position (deterministic exit or
    /// signature-placed interrupt): where the search for the next signature starts.
    position_base: Icount,
    finished: Option<End>,
    initial: Initial,
    /// [`Replay::recording_problem`], as found when opening.
    problem: Option<Arc<str>>,
    /// Reads the current task at each entry from user mode replay applies, where the
    /// debugger set one ([`Replay::follow_tasks`]); what it read, shared by every copy.
    task_reader: Option<TaskReader>,
    entry_tasks: Arc<EntryTasks>,
}

/// What replay may hold of a recording by default ([`ReplayLimits::recording_memory`]):
/// a cache of 32 MiB of decoded events, and where about 29 million events were applied.
pub const DEFAULT_RECORDING_MEMORY: u64 = 256 << 20;

/// The share of [`ReplayLimits::recording_memory`] the cache of decoded event chunks
/// may take: one eighth.
pub const EVENT_CACHE_SHARE: u64 = 8;

/// What replay holds of a recording in memory. The snapshot's pages are mapped to where
/// they are in the file and read when first touched, so they cost what the guest uses,
/// not what the file holds; the events are read from the file a chunk at a time when
/// replay needs them, through a cache of the chunks used last. The map, the cache and
/// the table of where each event was applied are held within a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Most bytes the map of the snapshot's pages, the cache of decoded event chunks
    /// ([`ReplayLimits::event_cache`]) and the table of where events were applied
    /// ([`APPLIED_BYTES_PER_EVENT`] each, with the chunk index) may take. A snapshot
    /// whose map takes more is refused; events past it are not replayed, as if the
    /// recording stopped there, and [`Replay::recording_problem`] says so.
    pub recording_memory: u64,
}

impl ReplayLimits {
    /// Most bytes of decoded event chunks the cache holds ([`EVENT_CACHE_SHARE`] of the
    /// budget); a chunk larger than that alone is held alone.
    pub fn event_cache(&self) -> u64 {
        self.recording_memory / EVENT_CACHE_SHARE
    }
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            recording_memory: DEFAULT_RECORDING_MEMORY,
        }
    }
}

/// Where the guest's agent hooks are (by symbol, from the recording's header): replay
/// stops there to supply what user mode did (see `machine::HOOK_*`).
#[derive(Debug, Clone, Copy, Default)]
struct AgentHooks {
    user_read: Option<u64>,
    user_source: Option<u64>,
    pte_read: Option<u64>,
}

impl AgentHooks {
    fn of(header: &Header) -> AgentHooks {
        let find = |name: &str| {
            header
                .symbols
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.addr)
        };
        AgentHooks {
            user_read: find(HOOK_USER_READ),
            user_source: find(HOOK_USER_SOURCE),
            pte_read: find(HOOK_PTE_READ),
        }
    }

    fn addrs(&self) -> impl Iterator<Item = u64> + use<> {
        [self.user_read, self.user_source, self.pte_read]
            .into_iter()
            .flatten()
    }

    fn contains(&self, addr: u64) -> bool {
        self.addrs().any(|a| a == addr)
    }
}

impl Replay {
    /// Opens a recording and restores its initial state, with the default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<Replay, ReplayError> {
        Self::open_with(path, ReplayLimits::default())
    }

    /// Opens a recording and restores its initial state.
    pub fn open_with(path: impl AsRef<Path>, limits: ReplayLimits) -> Result<Replay, ReplayError> {
        Self::from_reader(RecordingReader::open(path)?, limits)
    }

    /// Restores the recording's initial state; the reader stays with the replay, to read
    /// the snapshot's pages as they are first touched.
    pub fn from_reader<R: std::io::Read + std::io::Seek + Send + 'static>(
        mut reader: RecordingReader<R>,
        limits: ReplayLimits,
    ) -> Result<Replay, ReplayError> {
        let header = reader.header().clone();
        if header.machine.counter == CounterSourceKind::PerfGuestKernel {
            return Err(ReplayError::Unsupported(
                "its positions come from a performance counter of retired branches, and \
                 replay counts instructions"
                    .into(),
            ));
        }
        let cpu_state = reader.snapshot_cpu()?;
        // Every page is mapped to where it is in the file (each section is decoded and
        // checked on the way, one at a time) and read when first touched. The map's
        // size is checked as it doubles, since measuring it walks it.
        let mut mem = GuestMemory::new(&header.machine)?;
        let budget = limits.recording_memory;
        let (mut mapped, mut check_at) = (0u64, 1u64 << 16);
        let sections = reader.snapshot_section_count();
        for i in 0..sections {
            for (gpa, loc) in reader.snapshot_section_locations(i)? {
                mem.map_lazy(gpa, loc)?;
                mapped += 1;
            }
            if mapped >= check_at || i + 1 == sections {
                check_at = mapped * 2;
                let map = mem.heap_bytes_not_in(None);
                if map > budget {
                    return Err(ReplayError::OverBudget(format!(
                        "the map of its snapshot's pages takes more than the {} MiB replay \
                         may hold of a recording (--recording-memory): {} MiB for the first \
                         {mapped} of {} pages",
                        budget >> 20,
                        map >> 20,
                        reader.snapshot_page_count()
                    )));
                }
            }
        }
        let cpu = Cpu::new(cpu_state, header.cpuid.clone());
        // A PTE read is applied at the kernel's `krr_agent_pte_read`: a recording that
        // holds one but whose kernel has no such hook cannot be replayed faithfully,
        // and is refused here where the statistics count them (a file whose statistics
        // hide one diverges when replay reaches it).
        let hooks = AgentHooks::of(&header);
        if hooks.pte_read.is_none() && reader.stats().count(crate::event::EventKind::PteRead) > 0 {
            let found = reader
                .events_from(0)
                .enumerate()
                .find_map(|(n, e)| match e {
                    Ok(Event::PteRead(p)) => Some((n, p.addr)),
                    _ => None,
                });
            if let Some((n, addr)) = found {
                return Err(ReplayError::Unsupported(format!(
                    "event {n} is a page-table-entry read (at {addr:#x}), and its kernel has \
                     no {HOOK_PTE_READ} where replay would apply it"
                )));
            }
        }
        // Within the budget: the map, the chunk index, the event cache and where each
        // event was applied (8 bytes each). Events past it are not replayed.
        let mut problem = reader.recovery().reason.clone();
        let index = reader.chunk_index().to_vec();
        let count = reader.event_count();
        let fixed = mem.heap_bytes_not_in(None)
            + index.len() as u64 * INDEX_BYTES_PER_CHUNK
            + limits.event_cache();
        let fits = budget.saturating_sub(fixed) / APPLIED_BYTES_PER_EVENT;
        let available = if fits < count {
            problem = Some(format!(
                "its events take more than the {} MiB replay may hold of a recording \
                 (--recording-memory): the {fits} events before event {fits} are replayed",
                budget >> 20
            ));
            fits
        } else {
            count
        };
        // Where a complete recording ends: its final icount, or without a counter the
        // ordinal of its last deterministic exit (see crate::icount).
        let final_icount = problem
            .is_none()
            .then(|| reader.stats().kernel_instructions);
        let source = Arc::new(reader.into_source(limits.event_cache()));
        mem.set_source(source.clone());
        let events = Arc::new(RecordedEvents::new(&index, source, available));
        let mut r = Self::new(header, hooks, cpu, mem, events, final_icount);
        r.problem = problem.map(Arc::from);
        Ok(r)
    }

    /// Why the recording does not replay to its end, where it is incomplete (cut short)
    /// or damaged: the replay then stops after the events before the damage. Damage in
    /// an event chunk is found when replay (or a look at its events) first reads it.
    pub fn recording_problem(&self) -> Option<String> {
        self.problem
            .as_deref()
            .map(str::to_string)
            .or_else(|| self.events.damage())
            .or_else(|| self.mem.source_error().map(str::to_string))
    }

    fn new(
        header: Header,
        hooks: AgentHooks,
        mut cpu: Cpu,
        mem: GuestMemory,
        events: Arc<RecordedEvents>,
        final_icount: Option<Icount>,
    ) -> Replay {
        cpu.set_breakpoints(hooks.addrs());
        // Behave like the recording host's instruction emulator where it differs from
        // the architecture.
        cpu.set_quirks(header.machine.quirks.clone());
        // Answer the MSRs it does not model as the recording host did; one the table
        // does not cover stops replay, naming it (an empty table for older formats).
        cpu.set_msr_table(header.machine.msrs.clone());
        let exact = header.machine.counter != CounterSourceKind::None;
        let initial = Initial {
            cpu: cpu.clone(),
            mem: mem.clone(),
        };
        let mut r = Replay {
            cpu,
            mem,
            header: Arc::new(header),
            events,
            front_chunk: FrontChunk::default(),
            next: 0,
            next_interrupt: None,
            interrupt_searched: 0,
            interrupt_bound: None,
            hooks,
            user_breakpoints: Vec::new(),
            task_reader: None,
            entry_tasks: EntryTasks::new(),
            console: ConsoleLog::default(),
            console_checked: 0,
            uart_lcr: 0,
            uart_mcr: 0,
            final_icount,
            exact,
            at_exit: false,
            at_out: false,
            exit_ordinal: 0,
            signature_rip: None,
            position_base: 0,
            finished: None,
            initial,
            problem: None,
        };
        r.load_front();
        r.search_interrupt();
        r
    }

    /// A fresh replay of the same recording, back at its start.
    pub fn restart(&self) -> Replay {
        let mut r = self.clone();
        r.cpu = self.initial.cpu.clone();
        r.mem = self.initial.mem.clone();
        r.next = 0;
        r.next_interrupt = None;
        r.interrupt_searched = 0;
        r.interrupt_bound = None;
        r.console.clear();
        r.console_checked = 0;
        r.uart_lcr = 0;
        r.uart_mcr = 0;
        r.finished = None;
        r.load_front();
        r.search_interrupt();
        r
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of events replay reads: the recording's, or those before damage or the
    /// budget (see [`Replay::recording_problem`]). It goes down when replay finds a
    /// damaged chunk.
    pub fn event_count(&self) -> u64 {
        self.events.count()
    }

    /// Event number `n`, read from the file through the cache of decoded chunks.
    pub fn event(&self, n: u64) -> Option<EventRef> {
        match &self.front_chunk.0 {
            Some((_, c)) if c.get(n).is_some() && n < self.events.count() => {
                Some(EventRef::new(c.clone(), n))
            }
            _ => self.events.get(n),
        }
    }

    /// The events numbered in `range`, in order, read a chunk at a time.
    pub fn events(&self, range: std::ops::Range<u64>) -> Events {
        Events {
            events: self.events.clone(),
            range,
            chunk: None,
        }
    }

    /// Events per column over positions `0..=extent`: column `p * columns / (extent +
    /// 1)` (the last column for anything beyond) counts the events shown at position
    /// `p` ([`Replay::event_position`]). Reads only the chunks it must.
    pub fn event_density(&self, columns: usize, extent: Icount) -> Vec<u32> {
        self.events.density(columns, extent)
    }

    /// What the cache of decoded event chunks holds, shared by every replay of the
    /// recording.
    pub fn event_cache_usage(&self) -> CacheUsage {
        self.events.cache_usage()
    }

    /// Bytes the table of where events were applied takes now (it grows a chunk of
    /// events at a time as replay applies them, [`APPLIED_BYTES_PER_EVENT`] each).
    pub fn applied_table_bytes(&self) -> u64 {
        self.events.applied_bytes()
    }

    /// Number of events consumed so far.
    pub fn events_consumed(&self) -> u64 {
        self.next
    }

    /// Where replay applied event `n`, on the axis of the recording's event positions
    /// (the first position at which it has taken effect), once any replay of this
    /// recording has got that far. For most events it is the recorded position; for
    /// those the guest agent writes into its ring (see
    /// [`Event::position_is_bound`]) the recorded position is only an upper bound, and
    /// this is where the kernel really saw them.
    pub fn applied_position(&self, n: u64) -> Option<Icount> {
        self.events.applied(n)
    }

    /// How many events (from the first) some replay of this recording has applied,
    /// so that [`Replay::applied_position`] knows them (events apply in order).
    pub fn events_applied_known(&self) -> u64 {
        self.events.applied_known()
    }

    /// Reads the current task with `reader` at every entry from user mode this replay
    /// (and every copy made of it from now on) applies ([`Replay::entry_task`]).
    pub fn follow_tasks(&mut self, reader: TaskReader) {
        self.task_reader = Some(reader);
    }

    /// The task that made entry event `n` (a system call, an exception or interrupt in
    /// user mode), where a replay following tasks applied it.
    pub fn entry_task(&self, n: u64) -> Option<crate::guest_kernel::Process> {
        self.entry_tasks.task(n)
    }

    /// The position to show for event `n`: where it was applied, else its recorded
    /// position; and whether that is only the recorded upper bound.
    pub fn event_position(&self, n: u64) -> Option<(Icount, bool)> {
        match self.applied_position(n) {
            Some(p) => Some((p, false)),
            None => self.event(n).map(|e| Self::recorded_position(&e)),
        }
    }

    /// [`Replay::event_position`] of event `n`, which is `e`, read already.
    pub fn event_position_of(&self, n: u64, e: &Event) -> (Icount, bool) {
        match self.applied_position(n) {
            Some(p) => (p, false),
            None => Self::recorded_position(e),
        }
    }

    fn recorded_position(e: &Event) -> (Icount, bool) {
        (e.icount(), e.position_is_bound())
    }

    pub fn icount(&self) -> Icount {
        self.cpu.icount()
    }

    /// Whether the recording's event positions are instruction counts (it was made with
    /// a counter) rather than deterministic-exit ordinals.
    pub fn counted(&self) -> bool {
        self.exact
    }

    /// The position at which the recording ends, if it is complete (and no damage was
    /// found in it since it was opened).
    pub fn final_position(&self) -> Option<Icount> {
        self.final_icount()
    }

    fn final_icount(&self) -> Option<Icount> {
        self.final_icount.filter(|_| !self.events.damaged())
    }

    /// The guest console output replayed so far.
    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    pub fn finished(&self) -> Option<End> {
        self.finished
    }

    /// Whether every event was consumed and the recording's end was reached.
    pub fn fully_consumed(&self) -> bool {
        self.finished.is_some() && self.next == self.events.count()
    }

    pub fn set_user_breakpoints(&mut self, addrs: Vec<u64>) {
        self.user_breakpoints = addrs;
        self.cpu.set_breakpoints(
            self.hooks
                .addrs()
                .chain(self.user_breakpoints.iter().copied()),
        );
    }

    /// Takes the chunk holding the next event, unless held already.
    fn load_front(&mut self) {
        if self
            .front_chunk
            .0
            .as_ref()
            .is_none_or(|(_, c)| c.get(self.next).is_none())
        {
            self.front_chunk.0 = self.events.chunk_at(self.next);
        }
    }

    /// Searches the events of one more chunk for the next kernel-mode interrupt, unless
    /// it is known.
    fn search_interrupt(&mut self) {
        if self.next_interrupt.is_some_and(|(n, _)| n >= self.next) {
            return;
        }
        self.next_interrupt = None;
        let from = self.interrupt_searched.max(self.next);
        match self.chunk_for(from) {
            None => self.interrupt_searched = self.events.count(),
            Some(chunk) => {
                let end = chunk.end_event().min(self.events.count());
                let found = (from..end).find_map(|n| match chunk.get(n) {
                    Some(Event::KernelInterrupt(k)) => Some((n, *k)),
                    _ => None,
                });
                self.next_interrupt = found;
                self.interrupt_searched = found.map_or(end, |(n, _)| n);
            }
        }
        self.interrupt_bound = match self.next_interrupt {
            Some((_, k)) => Some(k.icount),
            None => self.events.position_lower_bound(self.interrupt_searched),
        };
    }

    /// The chunk holding event `n`: the front chunk, or one from the shared cache.
    fn chunk_for(&self, n: u64) -> Option<Arc<EventChunk>> {
        match &self.front_chunk.0 {
            Some((_, c)) if c.get(n).is_some() && n < self.events.count() => Some(c.clone()),
            _ => self.events.chunk_holding(n),
        }
    }

    /// Where the next kernel-mode interrupt may be, at the earliest, for an exact
    /// recording: its icount once found; else the position the index records for the
    /// first chunk not searched yet (events are stored in order of their positions);
    /// None when no interrupt is left. Searches further while that bound is not ahead.
    fn interrupt_limit(&mut self) -> Option<Icount> {
        loop {
            if self.next_interrupt.is_some() {
                return self.interrupt_bound;
            }
            let bound = self.interrupt_bound?;
            if bound > self.cpu.icount() {
                return Some(bound);
            }
            self.search_interrupt();
        }
    }

    /// The next event to consume, from the front chunk (which every move of `next`
    /// and the start of every run load).
    fn front(&self) -> Option<&Event> {
        match &self.front_chunk.0 {
            Some((_, c)) if self.next < self.events.count() => c.get(self.next),
            _ => None,
        }
    }

    fn consume(&mut self) {
        if let Some((i, _)) = &self.front_chunk.0 {
            self.events.set_applied(*i, self.next, self.position());
        }
        self.next += 1;
        self.load_front();
        if self.next_interrupt.is_some_and(|(n, _)| n < self.next) {
            self.search_interrupt();
        }
    }

    /// Runs until `target`, the end, a caller breakpoint or a divergence.
    pub fn run(&mut self, target: Target) -> Stop {
        self.run_capped(target, Icount::MAX)
    }

    /// Like [`Replay::run`], but also stops with `Stop::Reached(Target::Icount(cap))`
    /// when `cap` comes first (the timeline uses it to take checkpoints on the way).
    pub fn run_capped(&mut self, target: Target, cap: Icount) -> Stop {
        if let Some(end) = self.finished {
            return Stop::Finished(end);
        }
        self.load_front();
        loop {
            if let Err(d) = self.apply_due() {
                return Stop::Diverged(d);
            }
            if let Target::Event(n) = target
                && self.next > n
            {
                return Stop::Reached(target);
            }
            let goal = match target {
                Target::Icount(k) => k,
                _ => Icount::MAX,
            };
            if self.cpu.icount() >= goal {
                return Stop::Reached(target);
            }
            if self.cpu.icount() >= cap {
                return Stop::Reached(Target::Icount(cap));
            }
            let mut limit = goal.min(cap);
            if let Some(end) = self.signature_search_end() {
                limit = limit.min(end);
            }
            if self.exact {
                if let Some(k) = self.interrupt_limit() {
                    limit = limit.min(k);
                } else if let Some(f) = self.final_icount() {
                    limit = limit.min(f);
                }
            }
            self.at_exit = false;
            let exit = self.cpu.run(&mut self.mem, limit);
            self.at_exit = !matches!(
                exit,
                Exit::Limit | Exit::Breakpoint(_) | Exit::ReturnToUser | Exit::Error(_)
            );
            self.at_out = matches!(exit, Exit::PortOut { .. });
            if is_deterministic_exit(&exit) {
                self.exit_ordinal += 1;
                self.position_base = self.cpu.icount();
            }
            let result = match exit {
                Exit::Limit => self.on_limit(),
                Exit::PortIn { .. }
                | Exit::MmioRead { .. }
                | Exit::Rdtsc
                | Exit::Rdrand
                | Exit::Rdseed => self.on_input(&exit),
                Exit::PortInString { port, size, count } => self.on_string_input(port, size, count),
                Exit::PortOut { port, value, .. } => self.on_port_out(port, value),
                Exit::MmioWrite { .. } => self.after_exit(),
                Exit::Hlt => self.on_hlt(),
                Exit::ReturnToUser => self.on_return_to_user(),
                Exit::Breakpoint(addr) => match self.on_breakpoint(addr) {
                    Ok(true) => return Stop::Breakpoint(addr),
                    Ok(false) => Ok(()),
                    Err(d) => Err(d),
                },
                Exit::Error(e) => {
                    Err(self.diverge("an instruction the replay CPU executes", e.to_string()))
                }
            };
            if let Err(d) = result {
                return Stop::Diverged(d);
            }
            if !self.exact
                && self.finished.is_none()
                && self.final_icount() == Some(self.exit_ordinal)
                && self.next == self.events.count()
            {
                // The recording's last exit, every event applied: without a counter the
                // instructions the guest ran after it cannot be placed, so it ends here.
                self.finished = Some(End::EndOfRecording);
            }
            if let Some(end) = self.finished {
                return Stop::Finished(end);
            }
        }
    }

    /// Whether an event the recorder captured at `icount` (or, without exact icounts,
    /// at the exit just handled) applies now.
    fn due(&self, icount: Icount) -> bool {
        if self.exact {
            icount == self.cpu.icount()
        } else {
            self.at_exit && icount == self.exit_ordinal
        }
    }

    /// Like [`Replay::due`] for what the recorder captures only at an `out` exit.
    fn due_at_out(&self, icount: Icount) -> bool {
        self.due(icount) && (self.exact || self.at_out)
    }

    /// Where the replay is on the axis of the recording's event positions (each event's
    /// `icount`): the instruction count, or for a recording made without a counter the
    /// deterministic-exit ordinal (see [`crate::icount`]).
    pub fn position(&self) -> Icount {
        if self.exact {
            self.cpu.icount()
        } else {
            self.exit_ordinal
        }
    }

    /// Applies the events due at the current position: kernel-mode interrupts and
    /// digests whose icount has been reached.
    fn apply_due(&mut self) -> Result<(), Box<Divergence>> {
        loop {
            match self.front() {
                Some(Event::Digest(d)) if self.due_at_out(d.icount) => {
                    let d = *d;
                    let st = self.cpu.state();
                    if st.rip != d.rip || !d.registers.matches(&st.gpr, st.rflags) {
                        return Err(self.diverge_at_digest(&d));
                    }
                    if let Some(expected) = d.stack {
                        let actual = self.stack_digest();
                        if actual != Some(expected) {
                            return Err(self.diverge(
                                format!("digest of the stack top {expected:#018x}"),
                                match actual {
                                    Some(a) => format!("{a:#018x}"),
                                    None => "an unreadable stack".to_string(),
                                },
                            ));
                        }
                    }
                    self.consume();
                }
                Some(Event::KernelInterrupt(k))
                    if match k.point {
                        InjectionPoint::Signature { .. } if !self.exact => {
                            // After the exit it was recorded at, at its rip.
                            self.exit_ordinal >= k.icount && self.cpu.state().rip == k.rip
                        }
                        _ => self.due(k.icount),
                    } =>
                {
                    let k = *k;
                    let rip = self.cpu.state().rip;
                    let check_rip = !matches!(k.point, InjectionPoint::AfterExit);
                    if check_rip && rip != k.rip {
                        return Err(self.diverge(
                            format!("interrupt {:#x} at rip {:#x}", k.vector, k.rip),
                            format!("rip {rip:#x}"),
                        ));
                    }
                    if let InjectionPoint::Signature {
                        regs_digest,
                        stack_digest,
                        ..
                    } = k.point
                    {
                        let actual = self.cpu.state().regs_digest();
                        // The stack is read only where the registers match.
                        let matches = actual == regs_digest
                            && (stack_digest.is_none() || self.stack_digest() == stack_digest);
                        if !self.exact && !matches {
                            // Another instance of this rip: keep running.
                            return Ok(());
                        }
                        if !matches {
                            return Err(self.diverge(
                                format!("interrupt signature {regs_digest:#018x}"),
                                format!("registers {actual:#018x}"),
                            ));
                        }
                    }
                    if let Some(rip) = self.signature_rip.take()
                        && !self.hooks.contains(rip)
                        && !self.user_breakpoints.contains(&rip)
                    {
                        self.cpu.remove_breakpoint(rip);
                    }
                    if let Err(e) = self.cpu.inject_interrupt(&mut self.mem, k.vector) {
                        return Err(self.diverge(
                            format!("interrupt {:#x} delivered", k.vector),
                            e.to_string(),
                        ));
                    }
                    if matches!(k.point, InjectionPoint::Signature { .. }) {
                        self.position_base = self.cpu.icount();
                    }
                    self.consume();
                }
                Some(Event::KernelInterrupt(k))
                    if !self.exact && matches!(k.point, InjectionPoint::Signature { .. }) =>
                {
                    // Stop at the recorded rip; the signature decides which instance.
                    let rip = k.rip;
                    if self.signature_rip != Some(rip) {
                        self.signature_rip = Some(rip);
                        self.cpu.add_breakpoint(rip);
                    }
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    }

    /// The digest of the top of the stack ([`crate::state::stack_digest`]), if RSP's
    /// page is mapped.
    fn stack_digest(&self) -> Option<u64> {
        let rsp = self.cpu.state().gpr[gpr::RSP];
        let mut top = [0u8; crate::state::STACK_DIGEST_BYTES as usize];
        let top = &mut top[..crate::state::stack_digest_len(rsp)];
        self.cpu.read_virtual(&self.mem, rsp, top).ok()?;
        Some(crate::state::stack_digest(top))
    }

    /// Where the search for a pending signature-placed interrupt gives up (positional
    /// mode): the recorded wall time bounds the instructions the vCPU can have run since
    /// the position the interrupt follows (not before it: earlier spans between exits
    /// had no such interrupt, so no such bound).
    fn signature_search_end(&self) -> Option<Icount> {
        if self.exact || self.signature_rip.is_none() {
            return None;
        }
        match self.front() {
            Some(Event::KernelInterrupt(KernelInterrupt {
                icount: after_exit,
                point:
                    InjectionPoint::Signature {
                        since_position_ns, ..
                    },
                ..
            })) if self.exit_ordinal >= *after_exit => Some(
                self.position_base
                    .saturating_add(crate::icount::signature_search_limit(*since_position_ns)),
            ),
            _ => None,
        }
    }

    fn on_limit(&mut self) -> Result<(), Box<Divergence>> {
        let icount = self.cpu.icount();
        if !self.exact {
            if let Some(end) = self.signature_search_end()
                && icount >= end
                && let Some(Event::KernelInterrupt(k)) = self.front()
            {
                let k = *k;
                return Err(self.diverge(
                    format!(
                        "interrupt {:#x} at rip {:#x} within {} instructions of the last position",
                        k.vector,
                        k.rip,
                        icount - self.position_base
                    ),
                    "no instance of its signature".to_string(),
                ));
            }
            return Ok(());
        }
        if self.final_icount() == Some(icount)
            && self.next_interrupt.is_none()
            && self.interrupt_searched >= self.events.count()
        {
            self.finished = Some(End::EndOfRecording);
            return self.check_all_consumed();
        }
        // The next interrupt's point: every event before it must have been consumed.
        match self.front() {
            Some(Event::KernelInterrupt(k)) if k.icount == icount => Ok(()),
            Some(e) if self.next_interrupt_icount() == Some(icount) => Err(self.diverge(
                format!(
                    "{:?} event before the interrupt at icount {icount}",
                    e.kind()
                ),
                "the interrupt point reached first".to_string(),
            )),
            _ => Ok(()),
        }
    }

    fn next_interrupt_icount(&self) -> Option<Icount> {
        self.next_interrupt.map(|(_, k)| k.icount)
    }

    /// Supplies the value of a pending input instruction from the next event.
    fn on_input(&mut self, exit: &Exit) -> Result<(), Box<Divergence>> {
        let Some(front) = self.front().cloned() else {
            self.finished = Some(End::EndOfRecording);
            return Ok(());
        };
        let (value, cf) = match (exit, &front) {
            (Exit::PortIn { port, size }, Event::PortIn(p))
                if p.port == *port && p.size == *size =>
            {
                let here = if self.exact {
                    self.cpu.icount() + 1
                } else {
                    self.exit_ordinal
                };
                if p.icount != here {
                    return Err(self.diverge(
                        format!("port {port:#x} input at position {}", p.icount),
                        format!("at position {here}"),
                    ));
                }
                (p.value as u64, false)
            }
            (Exit::MmioRead { gpa, size }, Event::MmioRead(m))
                if m.gpa == *gpa && m.size == *size =>
            {
                (m.value, false)
            }
            (Exit::Rdtsc, Event::Random(r)) if r.instruction == RandomInstruction::Rdtsc => {
                self.check_bound(r.icount)?;
                (r.value, true)
            }
            (Exit::Rdrand, Event::Random(r)) if r.instruction == RandomInstruction::Rdrand => {
                self.check_bound(r.icount)?;
                (r.value, r.success)
            }
            (Exit::Rdseed, Event::Random(r)) if r.instruction == RandomInstruction::Rdseed => {
                self.check_bound(r.icount)?;
                (r.value, r.success)
            }
            _ => {
                return Err(self.diverge(describe(&front), describe_exit(exit)));
            }
        };
        if let Err(e) = self.cpu.complete_input(value, cf) {
            return Err(self.diverge("an input instruction to complete", e.to_string()));
        }
        self.consume();
        Ok(())
    }

    /// An `ins` chunk: `count` port-input events, recorded at this exit one per element.
    fn on_string_input(&mut self, port: u16, size: u8, count: u32) -> Result<(), Box<Divergence>> {
        let here = if self.exact {
            self.cpu.icount() + 1
        } else {
            self.exit_ordinal
        };
        let mut values = Vec::with_capacity(count as usize);
        for k in 0..count as usize {
            match self.event(self.next + k as u64).as_deref() {
                Some(Event::PortIn(p)) if p.port == port && p.size == size && p.icount == here => {
                    values.push(p.value)
                }
                Some(e) => {
                    let e = e.clone();
                    return Err(self.diverge(
                        describe(&e),
                        format!(
                            "element {} of {count} of string input from port {port:#x} (size {size}) at position {here}",
                            k + 1
                        ),
                    ));
                }
                None if k == 0 => {
                    self.finished = Some(End::EndOfRecording);
                    return Ok(());
                }
                None => {
                    return Err(self.diverge(
                        format!("{count} port inputs at position {here}"),
                        format!("the recording ends after {k}"),
                    ));
                }
            }
        }
        if let Err(e) = self.cpu.complete_string_input(&values) {
            return Err(self.diverge("a string input instruction to complete", e.to_string()));
        }
        for _ in 0..count {
            self.consume();
        }
        Ok(())
    }

    /// An agent event's icount is the exit where the recorder collected it: it cannot
    /// have happened later than that.
    fn check_bound(&self, bound: Icount) -> Result<(), Box<Divergence>> {
        if self.position() > bound {
            return Err(self.diverge(
                format!("this event no later than position {bound}"),
                format!("it is needed at position {}", self.position()),
            ));
        }
        Ok(())
    }

    fn on_port_out(&mut self, port: u16, value: u32) -> Result<(), Box<Divergence>> {
        let byte = value as u8;
        if port == PORT_COM1 + UART_LCR {
            self.uart_lcr = byte;
        } else if port == PORT_COM1 + UART_MCR {
            self.uart_mcr = byte;
        } else if port == PORT_COM1
            && self.uart_lcr & UART_LCR_DLAB == 0
            && self.uart_mcr & UART_MCR_LOOP == 0
        {
            self.console.push(byte);
        }
        self.after_exit()?;
        if port == PORT_POWEROFF {
            self.finished = Some(End::PowerOff);
            return self.check_all_consumed();
        }
        Ok(())
    }

    /// Applies what the recorder captured at this exit: device and VMM memory writes,
    /// console output (compared), digests (compared).
    fn after_exit(&mut self) -> Result<(), Box<Divergence>> {
        let icount = self.cpu.icount();
        loop {
            match self.front().cloned() {
                Some(Event::MemoryWrite(w)) if self.due_at_out(w.icount) => {
                    if let Err(e) = self.mem.write(w.gpa, &w.data) {
                        return Err(self.diverge(
                            format!("{} bytes written at {:#x}", w.data.len(), w.gpa),
                            e.to_string(),
                        ));
                    }
                    self.consume();
                }
                Some(Event::Console(c)) if self.due_at_out(c.icount) => {
                    let replayed = self.console.since(self.console_checked);
                    if replayed != c.bytes {
                        return Err(self.diverge(
                            format!("console {:?}", String::from_utf8_lossy(&c.bytes)),
                            format!("console {:?}", String::from_utf8_lossy(&replayed)),
                        ));
                    }
                    self.console_checked = self.console.len();
                    self.consume();
                }
                // Compared by apply_due, which runs next.
                Some(Event::Digest(d)) if self.due_at_out(d.icount) => return Ok(()),
                Some(e) if e.icount() < self.position() => {
                    return Err(self.diverge(
                        describe(&e),
                        format!("nothing consumed it by icount {icount}"),
                    ));
                }
                _ => return Ok(()),
            }
        }
    }

    fn on_hlt(&mut self) -> Result<(), Box<Divergence>> {
        self.after_exit()?;
        match self.front() {
            Some(Event::KernelInterrupt(k)) if self.due(k.icount) => Ok(()),
            None => {
                self.finished = Some(End::EndOfRecording);
                Ok(())
            }
            Some(e) => {
                let e = e.clone();
                Err(self.diverge(describe(&e), "hlt waiting for an interrupt".to_string()))
            }
        }
    }

    fn on_return_to_user(&mut self) -> Result<(), Box<Divergence>> {
        match self.front().cloned() {
            Some(Event::UserEntry(entry)) => {
                self.check_bound(entry.icount)?;
                if let Some(read_task) = &self.task_reader {
                    let (cpu, mem) = (&self.cpu, &self.mem);
                    let read = |a, buf: &mut [u8]| cpu.read_virtual(mem, a, buf).is_ok();
                    if let Some(task) = read_task(&read) {
                        self.entry_tasks.note(self.next, task);
                    }
                }
                if let Err(e) = self.cpu.enter_from_user(&mut self.mem, &entry) {
                    return Err(self.diverge("a kernel entry from user mode", e.to_string()));
                }
                self.consume();
                Ok(())
            }
            None => {
                self.finished = Some(End::EndOfRecording);
                Ok(())
            }
            Some(e) => Err(self.diverge(describe(&e), "a return to user mode".to_string())),
        }
    }

    /// Returns true for a caller breakpoint; agent hooks are handled here.
    fn on_breakpoint(&mut self, addr: u64) -> Result<bool, Box<Divergence>> {
        let applied = if Some(addr) == self.hooks.user_read {
            self.on_user_read()?
        } else if Some(addr) == self.hooks.user_source {
            self.on_user_source()?
        } else if Some(addr) == self.hooks.pte_read {
            self.on_pte_read()?
        } else {
            // A signature-placed interrupt's rip is checked by apply_due next.
            return Ok(Some(addr) != self.signature_rip || self.user_breakpoints.contains(&addr));
        };
        Ok(applied && self.user_breakpoints.contains(&addr))
    }

    /// At `krr_agent_user_read(dst, src, len)`, after the kernel copied `len` bytes from
    /// user memory: the recorded bytes go to `dst` (the agent may have split a large
    /// copy over several records). False where the recording ended.
    fn on_user_read(&mut self) -> Result<bool, Box<Divergence>> {
        let (dst, len) = {
            let st = self.cpu.state();
            (st.gpr[gpr::RDI], st.gpr[gpr::RDX])
        };
        let mut done = 0u64;
        while done < len {
            let at = dst.wrapping_add(done);
            let matched = |e: &Event| match e {
                Event::UserRead(u)
                    if u.dst == at && !u.data.is_empty() && done + u.data.len() as u64 <= len =>
                {
                    Some((u.icount, u.dst, u.data.clone()))
                }
                _ => None,
            };
            let waiting = format!("user read of {} bytes into {at:#x}", len - done);
            match self.write_back_front(matched, waiting)? {
                Some(n) => done += n as u64,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// At `krr_agent_user_source(src, len, string)`, before the kernel reads user memory
    /// whose bytes steer it: the one recorded read of this call goes back to `src`, so
    /// the kernel's read finds what it found when recorded.
    fn on_user_source(&mut self) -> Result<bool, Box<Divergence>> {
        let (src, len) = {
            let st = self.cpu.state();
            (st.gpr[gpr::RDI], st.gpr[gpr::RSI])
        };
        let matched = |e: &Event| match e {
            Event::UserRead(u) if u.dst == src && u.data.len() as u64 <= len => {
                Some((u.icount, u.dst, u.data.clone()))
            }
            _ => None,
        };
        let waiting = format!("a read of up to {len} user bytes at {src:#x}");
        Ok(self.write_back_front(matched, waiting)?.is_some())
    }

    /// At `krr_agent_pte_read(ptep)`, before the kernel reads a user page-table entry:
    /// the recorded entry, with the accessed and dirty bits user mode set, goes back.
    fn on_pte_read(&mut self) -> Result<bool, Box<Divergence>> {
        let ptep = self.cpu.state().gpr[gpr::RDI];
        let matched = |e: &Event| match e {
            Event::PteRead(p) if p.addr == ptep => {
                Some((p.icount, p.addr, p.value.to_le_bytes().to_vec()))
            }
            _ => None,
        };
        let waiting = format!("a read of the page-table entry at {ptep:#x}");
        Ok(self.write_back_front(matched, waiting)?.is_some())
    }

    /// Applies the next event where an agent hook expects it: `matched` gives its
    /// position and the bytes to write at a guest virtual address, which the kernel
    /// reads next. The bytes written; None where the recording ended; a divergence
    /// (`waiting` says what the hook waited for) where the next event is another.
    fn write_back_front(
        &mut self,
        matched: impl FnOnce(&Event) -> Option<(Icount, u64, Vec<u8>)>,
        waiting: String,
    ) -> Result<Option<usize>, Box<Divergence>> {
        let Some(front) = self.front().cloned() else {
            self.finished = Some(End::EndOfRecording);
            return Ok(None);
        };
        let Some((icount, addr, data)) = matched(&front) else {
            return Err(self.diverge(describe(&front), waiting));
        };
        self.check_bound(icount)?;
        if let Err(f) = self.cpu.write_virtual(&mut self.mem, addr, &data) {
            return Err(self.diverge(
                format!("the recorded bytes written to {addr:#x}"),
                format!("{f:?}"),
            ));
        }
        self.consume();
        Ok(Some(data.len()))
    }

    fn check_all_consumed(&self) -> Result<(), Box<Divergence>> {
        match self.front() {
            None => Ok(()),
            Some(e) => {
                let e = e.clone();
                Err(self.diverge(describe(&e), "the end of the recording".to_string()))
            }
        }
    }

    fn diverge(&self, expected: impl Into<String>, actual: impl Into<String>) -> Box<Divergence> {
        Box::new(Divergence {
            event: self.next,
            icount: self.cpu.icount(),
            rip: self.cpu.state().rip,
            expected: expected.into(),
            actual: actual.into(),
            differences: Vec::new(),
            causes: Vec::new(),
            last_instructions: Vec::new(),
        })
    }

    /// The divergence at digest `d`: which registers and flags differ, where the
    /// recording stored them (format 3), else that their hash does.
    fn diverge_at_digest(&self, d: &crate::event::Digest) -> Box<Divergence> {
        let st = self.cpu.state();
        let mut div = match d.registers {
            DigestRegisters::Full { gpr, rflags } => {
                let mut div = self.diverge(
                    format!("digest rip {:#x} and the recorded registers", d.rip),
                    format!("rip {:#x} and other registers", st.rip),
                );
                div.differences =
                    divergence::register_differences((&gpr, rflags), (&st.gpr, st.rflags));
                div
            }
            DigestRegisters::Hash(h) => self.diverge(
                format!("digest rip {:#x} registers {h:#018x}", d.rip),
                format!("rip {:#x} registers {:#018x}", st.rip, st.regs_digest()),
            ),
        };
        if st.rip != d.rip {
            div.differences.insert(
                0,
                divergence::Difference {
                    what: "rip".into(),
                    expected: d.rip,
                    actual: st.rip,
                },
            );
        }
        div
    }

    /// The instructions executed just before `icount`: replays again from the start to
    /// `icount - n`, then one instruction at a time.
    pub fn last_instructions(&self, icount: Icount, n: u64) -> Vec<String> {
        let mut r = self.restart();
        let from = icount.saturating_sub(n);
        if !matches!(r.run(Target::Icount(from)), Stop::Reached(_)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        while r.cpu.icount() < icount {
            out.push(divergence::disassemble_at(&r));
            let next = r.cpu.icount() + 1;
            if !matches!(r.run(Target::Icount(next)), Stop::Reached(_)) {
                break;
            }
        }
        out
    }
}

/// An event as a divergence names it: its kind and details.
fn describe(e: &Event) -> String {
    format!("{} event: {e}", e.kind().name())
}

fn describe_exit(exit: &Exit) -> String {
    match exit {
        Exit::PortIn { port, size } => format!("port input {port:#x} (size {size})"),
        Exit::PortInString { port, size, count } => {
            format!("string input of {count} from port {port:#x} (size {size})")
        }
        Exit::MmioRead { gpa, .. } => format!("MMIO read at {gpa:#x}"),
        other => format!("{other:?}"),
    }
}

/// Exits that happen at the same instruction under KVM and in replay, whatever the
/// timing: what a recording without a counter counts as positions.
fn is_deterministic_exit(exit: &Exit) -> bool {
    matches!(
        exit,
        Exit::PortIn { .. }
            | Exit::PortInString { .. }
            | Exit::PortOut { .. }
            | Exit::MmioRead { .. }
            | Exit::MmioWrite { .. }
            | Exit::Hlt
    )
}
