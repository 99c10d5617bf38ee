//! What the recorder captures, and when it lets an interrupt in.
//!
//! [`Capture`] is the recording's side of the machine: the position of every exit (the
//! instruction counter read through [`KvmCounterModel`], or without a counter the
//! ordinal of the deterministic exit), the agent ring's reader, the console line being
//! assembled, the events not yet handed to the sink (with counts per kind), and the
//! [`InjectionPolicy`]. The recorder ([`crate::record`]) drives it from its exit
//! handlers; every event is made here, stamped with the position of the exit it was
//! captured at:
//!
//! * port input and MMIO reads: [`Capture::port_in`], [`Capture::mmio_read`];
//! * DMA and VMM memory writes: [`Capture::memory_write`], [`Capture::reset_ring`];
//! * kernel-mode interrupts: [`Capture::kernel_interrupt`];
//! * agent ring records (user entries, user reads, rdtsc...): [`Capture::sync`];
//! * console output: [`Capture::console`]; digests: [`Capture::digest`].

use crate::RecorderError;
use crate::agent_ring::{self, HEAD_OFFSET, RING_GPA, RING_REGION_SIZE, RingReader};
use crate::counter::CounterSource;
use crate::record::EventSink;
use krr_engine::arch::vector;
use krr_engine::event::{
    ConsoleOutput, Digest, DigestRegisters, EntryKind, Event, EventKind, InjectionPoint,
    KernelInterrupt, MemoryWrite, MmioRead, PortIn, UserEntry, WriteSource,
};
use krr_engine::icount::KvmCounterModel;
use krr_engine::state::{CounterSourceKind, PAGE_SIZE};
use krr_kvm::Vm;
use std::time::{Duration, Instant};

/// A console line is recorded at its newline, or when it reaches this length.
pub const CONSOLE_LINE_MAX: usize = 256;

/// Positions, the agent ring, the console line, pending events and the injection
/// policy of one recording.
pub struct Capture {
    /// Off, nothing is read from the counter or the ring and no event is kept: the
    /// baseline of the recording-overhead benchmark.
    enabled: bool,
    counter: Box<dyn CounterSource>,
    model: KvmCounterModel,
    ring: RingReader,
    /// The ring region as last read (only the header and the new records are copied).
    ring_buf: Vec<u8>,
    console_line: Vec<u8>,
    pending: Vec<Event>,
    counts: [u64; EventKind::ALL.len()],
    /// Port and MMIO accesses and `hlt` exits so far (the position without a counter).
    deterministic_exits: u64,
    /// The position of the exit the vCPU is stopped at.
    icount: u64,
    policy: InjectionPolicy,
}

impl Capture {
    /// Captures with `counter` (if `enabled`); kernel-mode interrupts wait for a
    /// deterministic exit at most `max_kernel_delay` where there is no counter.
    pub fn new(
        counter: Box<dyn CounterSource>,
        enabled: bool,
        max_kernel_delay: Duration,
    ) -> Capture {
        let has_counter = counter.kind() != CounterSourceKind::None;
        Capture {
            enabled,
            counter,
            model: KvmCounterModel::default(),
            ring: RingReader::new(),
            ring_buf: vec![0u8; RING_REGION_SIZE as usize],
            console_line: Vec::new(),
            pending: Vec::new(),
            counts: [0; EventKind::ALL.len()],
            deterministic_exits: 0,
            icount: 0,
            policy: InjectionPolicy::new(has_counter, max_kernel_delay, Instant::now()),
        }
    }

    pub fn counter_kind(&self) -> CounterSourceKind {
        self.counter.kind()
    }

    /// Starts counting: the counter's reading now is position 0.
    pub fn start(&mut self) -> Result<(), RecorderError> {
        let start_raw = self.counter.read()?;
        self.policy.at_position(Instant::now());
        self.model = KvmCounterModel::new(start_raw);
        Ok(())
    }

    /// The position of the exit the vCPU is stopped at (the final one once it ended).
    pub fn icount(&self) -> u64 {
        self.icount
    }

    /// Events handed to the sink, per kind ([`EventKind::index`]).
    pub fn counts(&self) -> [u64; EventKind::ALL.len()] {
        self.counts
    }

    pub fn policy(&mut self) -> &mut InjectionPolicy {
        &mut self.policy
    }

    /// An exit that replay meets at the same instruction: a recorded position.
    pub fn at_deterministic_exit(&mut self, vm: &Vm) -> Result<(), RecorderError> {
        self.deterministic_exits += 1;
        self.policy.at_position(Instant::now());
        self.sync(vm)
    }

    /// Reads the counter and collects the agent's new ring records: done at every exit,
    /// so that events stay in execution order.
    pub fn sync(&mut self, vm: &Vm) -> Result<(), RecorderError> {
        if !self.enabled {
            return Ok(());
        }
        let raw = self.counter.read()?;
        let first = self.pending.len();
        self.poll_ring(vm)?;
        // Entries collected now happened before this exit, so they count for this
        // reading too; the collected events are stamped with this exit's position.
        self.icount = if self.counter.kind() == CounterSourceKind::None {
            self.deterministic_exits
        } else {
            self.model.icount(raw)
        };
        for e in &mut self.pending[first..] {
            e.set_icount(self.icount);
        }
        Ok(())
    }

    fn poll_ring(&mut self, vm: &Vm) -> Result<(), RecorderError> {
        // The header, then only the records appended since the last poll: this runs at
        // every exit, and the region is a megabyte.
        let header = agent_ring::RING_HEADER_SIZE;
        vm.read(RING_GPA, &mut self.ring_buf[..header])
            .map_err(RecorderError::ReadRing)?;
        let unread = self.ring.unread(&self.ring_buf)?;
        if !unread.is_empty() {
            vm.read(RING_GPA + unread.start as u64, &mut self.ring_buf[unread])
                .map_err(RecorderError::ReadRing)?;
        }
        let first = self.pending.len();
        self.ring
            .poll(&self.ring_buf, self.icount, &mut self.pending)?;
        for e in &self.pending[first..] {
            if let Event::UserEntry(entry) = e {
                self.model
                    .observe_entry(entry, &entry_instruction(vm, entry));
            }
        }
        Ok(())
    }

    /// The agent rang its doorbell: the records up to it were collected by
    /// [`Capture::sync`]; the ring is reset as a recorded VMM write, so that replay
    /// resets it at the same point.
    pub fn reset_ring(&mut self, vm: &Vm) -> Result<(), RecorderError> {
        let head = 0u64.to_le_bytes();
        vm.write(RING_GPA + HEAD_OFFSET, &head)
            .map_err(RecorderError::ResetRing)?;
        self.ring.reset();
        self.memory_write(RING_GPA + HEAD_OFFSET, WriteSource::Vmm, head.to_vec());
        Ok(())
    }

    fn push(&mut self, e: Event) {
        if self.enabled {
            self.pending.push(e);
        }
    }

    /// The guest read `value` from `port` (a `size`-byte access).
    pub fn port_in(&mut self, port: u16, size: usize, value: u32) {
        self.push(Event::PortIn(PortIn {
            icount: self.icount,
            port,
            size: size as u8,
            value,
        }));
    }

    /// The guest read `value` at guest-physical `gpa` outside RAM.
    pub fn mmio_read(&mut self, gpa: u64, size: usize, value: u64) {
        self.push(Event::MmioRead(MmioRead {
            icount: self.icount,
            gpa,
            size: size as u8,
            value,
        }));
    }

    /// `data` was written into guest memory at `gpa` by a device or the recorder.
    pub fn memory_write(&mut self, gpa: u64, source: WriteSource, data: Vec<u8>) {
        self.push(Event::MemoryWrite(MemoryWrite {
            icount: self.icount,
            gpa,
            source,
            data,
        }));
    }

    /// Interrupt `vector` was injected in kernel mode at `rip`, at `point`.
    pub fn kernel_interrupt(&mut self, vector: u8, rip: u64, point: InjectionPoint) {
        self.push(Event::KernelInterrupt(KernelInterrupt {
            icount: self.icount,
            vector,
            rip,
            point,
        }));
    }

    /// The kernel's registers (and the digest of its stack top) at this position.
    pub fn digest(&mut self, rip: u64, registers: DigestRegisters, stack: Option<u64>) {
        self.push(Event::Digest(Digest {
            icount: self.icount,
            rip,
            registers,
            stack,
        }));
    }

    /// A byte the console transmitted: recorded with its line.
    pub fn console(&mut self, byte: u8) {
        self.console_line.push(byte);
        if byte == b'\n' || self.console_line.len() >= CONSOLE_LINE_MAX {
            self.flush_console();
        }
    }

    /// Whether console bytes wait for the end of their line.
    pub fn console_pending(&self) -> bool {
        !self.console_line.is_empty()
    }

    /// Drops the console bytes that wait for the end of their line; returns them.
    pub fn discard_console_line(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.console_line)
    }

    /// Records the console line so far, if any.
    pub fn flush_console(&mut self) {
        if self.console_line.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.console_line);
        self.push(Event::Console(ConsoleOutput {
            icount: self.icount,
            bytes,
        }));
    }

    /// Hands the pending events to `sink`, in order.
    pub fn drain(&mut self, sink: &mut dyn EventSink) -> Result<(), RecorderError> {
        for e in self.pending.drain(..) {
            self.counts[e.kind().index()] += 1;
            sink.event(e).map_err(RecorderError::Sink)?;
        }
        Ok(())
    }
}

/// The bytes at a #UD entry's RIP, which tell the counter model whether the host
/// emulated the instruction (`int n`, [`krr_engine::icount::counter_extra_for_entry`]):
/// read through the page tables the vCPU has now (the entry's, unless the kernel
/// switched address spaces before this exit), at most up to the end of the page; empty
/// for other entries and where the address does not translate.
fn entry_instruction(vm: &Vm, entry: &UserEntry) -> Vec<u8> {
    const MAX_INSTRUCTION: u64 = 15;
    if !matches!(
        entry.kind,
        EntryKind::Exception {
            vector: vector::UD,
            ..
        }
    ) {
        return Vec::new();
    }
    let rip = entry.regs.rip;
    let Ok(t) = vm.vcpu().translate_gva(rip) else {
        return Vec::new();
    };
    if t.valid == 0 {
        return Vec::new();
    }
    let len = MAX_INSTRUCTION.min(PAGE_SIZE as u64 - (rip & (PAGE_SIZE as u64 - 1)));
    let mut bytes = vec![0u8; len as usize];
    match vm.read(t.physical_address, &mut bytes) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

/// The exit the vCPU stopped at, for the injection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A port or MMIO access, or `hlt`: a point replay finds by itself.
    Deterministic,
    /// A kick from another thread: the guest stopped at an arbitrary instruction.
    Async,
    /// KVM reports the guest can take an interrupt now.
    Window,
}

/// What to do with a pending interrupt the vCPU is ready to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Not now: wait for a deterministic exit (or for the delay bound).
    Wait,
    /// Inject; the guest is in user mode, so the agent records the interrupt as an
    /// entry from user mode.
    User,
    /// Inject in kernel mode, placed by its exact instruction count.
    Icount,
    /// Inject in kernel mode right after this deterministic exit (no counter).
    AfterExit,
    /// Inject in kernel mode at an arbitrary instruction, which replay finds by its
    /// signature; `since_position` is the time since the last recorded position (it
    /// bounds replay's search).
    Signature { since_position: Duration },
}

/// When a pending interrupt is injected (DESIGN.md section 3). With an instruction
/// counter, at once, wherever the guest is; without one, in user mode at once (the
/// agent records the entry), in kernel mode at a deterministic exit, or by signature
/// once it has waited `max_kernel_delay`.
#[derive(Debug, Clone)]
pub struct InjectionPolicy {
    has_counter: bool,
    max_kernel_delay: Duration,
    /// When the oldest undelivered interrupt became pending.
    pending_since: Option<Instant>,
    /// When the vCPU was last at a recorded position (a deterministic exit or a
    /// signature-placed interrupt): bounds replay's search for the next signature.
    last_position: Instant,
}

impl InjectionPolicy {
    pub fn new(has_counter: bool, max_kernel_delay: Duration, now: Instant) -> Self {
        InjectionPolicy {
            has_counter,
            max_kernel_delay,
            pending_since: None,
            last_position: now,
        }
    }

    /// An interrupt is pending at `now` (the oldest pending one's time is kept).
    pub fn interrupt_pending(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// No interrupt is pending any more (none was, or it was injected).
    pub fn no_interrupt_pending(&mut self) {
        self.pending_since = None;
    }

    /// The vCPU is at a recorded position at `now`.
    pub fn at_position(&mut self, now: Instant) {
        self.last_position = now;
    }

    /// What to do at `now` with the pending interrupt the vCPU, stopped at an exit of
    /// kind `last`, in user mode or not, is ready to take.
    pub fn decide(&mut self, last: ExitKind, user_mode: bool, now: Instant) -> Injection {
        if user_mode {
            return Injection::User;
        }
        let waited = self
            .pending_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        match (last, self.has_counter) {
            (_, true) => Injection::Icount,
            (ExitKind::Deterministic, false) => Injection::AfterExit,
            (ExitKind::Async | ExitKind::Window, false) if waited >= self.max_kernel_delay => {
                let since_position = now.saturating_duration_since(self.last_position);
                self.last_position = now;
                Injection::Signature { since_position }
            }
            _ => Injection::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krr_engine::event::UserRegs;
    use krr_engine::icount::counter_extra_for_entry;

    const DELAY: Duration = Duration::from_millis(5);

    fn entry_at(rip: u64, kind: EntryKind) -> UserEntry {
        UserEntry {
            icount: 0,
            kind,
            regs: UserRegs {
                gpr: [0; 16],
                rip,
                rflags: 0x202,
                cs: 0x33,
                ss: 0x2b,
                fs_base: 0,
                gs_base: 0,
            },
        }
    }

    /// The counter model learns whether a #UD came from `int n` from the bytes the
    /// recorder reads at the entry's RIP through the vCPU's page tables.
    #[test]
    fn a_ud_entry_is_read_at_its_rip_for_the_counter_model() {
        if let Err(why) = crate::kvm_available() {
            println!("skipped: {why}");
            return;
        }
        let mut vm = Vm::with_ram(4 << 20).unwrap();
        krr_kvm::long_mode::load_flat_code(&mut vm, &[0xf4]).unwrap();
        // `int 0x80` at the end of a page: only what lies in that page is read.
        let (int_80, page_end) = (0x20_0000u64, 0x20_0ffeu64);
        vm.write(int_80, &[0xcd, 0x80]).unwrap();
        vm.write(page_end, &[0xcd, 0x80]).unwrap();
        let ud = |rip| {
            entry_at(
                rip,
                EntryKind::Exception {
                    vector: vector::UD,
                    error_code: None,
                    cr2: 0,
                },
            )
        };
        let read = entry_instruction(&vm, &ud(int_80));
        assert_eq!(read.len(), 15);
        assert_eq!(read[..2], [0xcd, 0x80]);
        assert_eq!(entry_instruction(&vm, &ud(page_end)), [0xcd, 0x80]);
        assert_eq!(counter_extra_for_entry(&ud(int_80), &read), 1);
        // Other entries read nothing; nor does an address that does not translate.
        let gp = EntryKind::Exception {
            vector: vector::GP,
            error_code: Some(0),
            cr2: 0,
        };
        assert!(entry_instruction(&vm, &entry_at(int_80, gp)).is_empty());
        assert!(entry_instruction(&vm, &ud(0x7fff_0000_0000)).is_empty());
    }

    #[test]
    fn with_a_counter_every_interrupt_goes_in_at_once() {
        let t0 = Instant::now();
        let mut p = InjectionPolicy::new(true, DELAY, t0);
        p.interrupt_pending(t0);
        for last in [ExitKind::Deterministic, ExitKind::Async, ExitKind::Window] {
            assert_eq!(p.decide(last, false, t0), Injection::Icount);
            assert_eq!(p.decide(last, true, t0), Injection::User);
        }
    }

    #[test]
    fn without_a_counter_kernel_interrupts_wait_for_an_exit_or_the_delay() {
        let t0 = Instant::now();
        let mut p = InjectionPolicy::new(false, DELAY, t0);
        let t1 = t0 + Duration::from_millis(1);
        p.interrupt_pending(t1);
        p.interrupt_pending(t1 + Duration::from_millis(3)); // the oldest counts
        assert_eq!(p.decide(ExitKind::Async, true, t1), Injection::User);
        assert_eq!(
            p.decide(ExitKind::Deterministic, false, t1),
            Injection::AfterExit
        );
        let early = t1 + DELAY - Duration::from_micros(1);
        assert_eq!(p.decide(ExitKind::Async, false, early), Injection::Wait);
        assert_eq!(p.decide(ExitKind::Window, false, early), Injection::Wait);
        let late = t1 + DELAY;
        assert_eq!(
            p.decide(ExitKind::Window, false, late),
            Injection::Signature {
                since_position: late - t0
            }
        );
        // A signature is a recorded position: the next one counts from it.
        p.no_interrupt_pending();
        p.interrupt_pending(late);
        let later = late + DELAY * 2;
        assert_eq!(
            p.decide(ExitKind::Async, false, later),
            Injection::Signature {
                since_position: DELAY * 2
            }
        );
        // So does a deterministic exit.
        p.at_position(later);
        p.interrupt_pending(later);
        assert_eq!(
            p.decide(ExitKind::Async, false, later + DELAY),
            Injection::Signature {
                since_position: DELAY
            }
        );
        // The wait counts from when the interrupt became pending.
        p.no_interrupt_pending();
        assert_eq!(
            p.decide(ExitKind::Async, false, later + DELAY * 10),
            Injection::Wait
        );
    }
}
