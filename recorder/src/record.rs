//! The recorder: the machine (a [`Vm`], its [`Devices`]) and the recording loop that
//! runs the guest, routes each exit to the device bus, and hands what it captures
//! ([`Capture`]) to an [`EventSink`].
//!
//! Each exit is one lookup on a bus ([`Devices::port_in`] and its siblings); what a
//! device asks of the machine ([`Effect`]) is carried out here: console bytes, DMA
//! writes (applied and recorded), interrupt lines, power-off, the agent's doorbell.
//! Where each event is made is listed in [`crate::capture`].

use crate::agent_ring::{self, DOORBELL_FLUSH, DOORBELL_FULL, RING_GPA};
use crate::capture::{Capture, ExitKind, Injection};
use crate::counter::{CounterError, CounterSource, KvmInsnEmulation, NoCounter};
use crate::devices::{Devices, DmaMemory, Doorbell, Effect, IRQ_TIMER, Io};
use crate::image::DiskImage;
use crate::loader::{self, KernelFormat, LoadedKernel};
use crate::{RecorderError, symbols};
use krr_engine::cpu::MsrTable;
use krr_engine::event::{
    DigestRegisters, Event, EventKind, InjectionPoint, RFLAGS_IF, WriteSource,
};
use krr_engine::state::{
    CounterSourceKind, CpuidEntry, KernelIdentity, MachineConfig, PAGE_SIZE, Quirks,
    STACK_DIGEST_BYTES, Snapshot, SnapshotPage, Symbol, regs_digest, stack_digest,
    stack_digest_len,
};
use krr_kvm::kick::Kicker;
use krr_kvm::regs::gprs;
use krr_kvm::{Exit, Vm};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which counter source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterChoice {
    /// The exact KVM counter where the host has one, otherwise none.
    Auto,
    /// Never use a counter (the policy of hosts without one).
    None,
}

#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// The kernel image (ELF64, Linux vmlinux or bzImage).
    pub kernel: Vec<u8>,
    /// How the kernel is named in the recording ("builtin:demo" or a file name).
    pub kernel_name: String,
    /// The user's kernel command line: a Linux kernel gets it after what the host
    /// needs ([`crate::linux::host_command_line`]); other kernels get none.
    pub cmdline: String,
    /// A Linux kernel's initial RAM disk.
    pub initrd: Option<Vec<u8>>,
    /// The ELF to take the kernel's symbols from when the kernel image has none (a
    /// bzImage): its vmlinux.
    pub vmlinux: Option<Vec<u8>>,
    /// Disk image exposed as the fw_cfg file `opt/krr/disk` (read where the guest reads
    /// it).
    pub disk: Option<DiskImage>,
    pub memory: u64,
    pub counter: CounterChoice,
    /// Longest a pending interrupt waits for a deterministic exit while the guest runs
    /// kernel code, when there is no counter.
    pub max_kernel_delay: Duration,
    /// A digest every this many VM exits (and at every doorbell).
    pub digest_interval: u64,
    /// Embed the kernel's ELF (the kernel image, or `vmlinux`) in the recording if it
    /// is at most this large.
    pub embed_kernel_limit: usize,
    /// Capture events. Off, the same machine runs the same guest without reading the
    /// counter, the agent ring or producing events: the baseline of the recording
    /// overhead benchmark.
    pub capture: bool,
}

impl RecordConfig {
    pub fn new(kernel: Vec<u8>, kernel_name: impl Into<String>) -> Self {
        RecordConfig {
            kernel,
            kernel_name: kernel_name.into(),
            cmdline: String::new(),
            initrd: None,
            vmlinux: None,
            disk: None,
            memory: 64 << 20,
            counter: CounterChoice::Auto,
            max_kernel_delay: Duration::from_millis(5),
            digest_interval: 64,
            embed_kernel_limit: 16 << 20,
            capture: true,
        }
    }
}

/// Everything the recording header and initial snapshot need.
#[derive(Debug, Clone)]
pub struct RecordStart {
    pub machine: MachineConfig,
    pub cpuid: Vec<CpuidEntry>,
    pub kernel: KernelIdentity,
    pub symbols: Vec<Symbol>,
    pub kernel_image: Option<Vec<u8>>,
    /// The command line the kernel was given (empty for a kernel that takes none).
    pub kernel_command_line: String,
    pub snapshot: Snapshot,
}

/// Why a sink refused an event: its own error, kept as the source of
/// [`RecorderError::Sink`].
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where events go (the trace writer, or a vector in tests).
pub trait EventSink {
    fn event(&mut self, event: Event) -> Result<(), SinkError>;

    /// Every event captured so far has been handed over. Called at every exit, and at
    /// least every [`CAUGHT_UP_INTERVAL`] while the guest runs (a guest that stops
    /// exiting is kicked for it), so that a sink can write what it buffers although no
    /// new event comes.
    fn caught_up(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl EventSink for Vec<Event> {
    fn event(&mut self, event: Event) -> Result<(), SinkError> {
        self.push(event);
        Ok(())
    }
}

/// Why a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The guest wrote the power-off port.
    PowerOff,
    /// The user asked to stop (Ctrl-C, SIGTERM, a key).
    Stopped,
    /// The guest did something the recorder cannot continue from; everything before is
    /// recorded.
    GuestError(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::PowerOff => write!(f, "guest powered off"),
            EndReason::Stopped => write!(f, "stopped by request"),
            EndReason::GuestError(e) => write!(f, "guest error: {e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecordOutcome {
    pub end: EndReason,
    /// Kernel instructions recorded (the final icount).
    pub kernel_instructions: u64,
    pub duration: Duration,
    pub exits: u64,
    pub counts: [u64; EventKind::ALL.len()],
    /// The CPU the vCPU thread was pinned to.
    pub cpu: usize,
    /// How long the vCPU thread was ready to run but waited for that CPU (other work
    /// there slows the guest down, nothing else), where the kernel reports it.
    pub cpu_wait: Option<Duration>,
}

/// Guest RAM as devices see it for DMA.
struct GuestRam<'a>(&'a Vm);

impl DmaMemory for GuestRam<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.contains(gpa, buf.len() as u64) && self.0.read(gpa, buf).is_ok()
    }
    fn writable(&self, gpa: u64, len: u64) -> bool {
        // Only ordinary RAM: a device never writes the agent ring.
        gpa.checked_add(len)
            .is_some_and(|end| end <= self.0.ram_size())
    }
}

/// The CPU the recording runs on, and what a guest observes there.
struct Host {
    /// The CPU the vCPU thread is pinned to.
    cpu: usize,
    /// The CPUID values a guest observes on it.
    cpuid: Vec<CpuidEntry>,
    quirks: Quirks,
    /// What `rdmsr` and `wrmsr` do there with the MSRs the replay CPU does not model.
    msrs: MsrTable,
}

pub struct Recorder {
    vm: Vm,
    devices: Devices,
    capture: Capture,
    config: RecordConfig,
    loaded: LoadedKernel,
    /// The command line the kernel was given.
    kernel_command_line: String,
    symbols: Vec<Symbol>,
    host: Host,
    exits: u64,
    /// When the loop first saw the stop request.
    stop_seen: Option<Instant>,
    /// The vCPU stopped at an input (`in`, MMIO read) that KVM completes only at the next
    /// KVM_RUN: RIP is still on the instruction.
    input_incomplete: bool,
}

/// Longest the recorder leaves its sink without a word ([`EventSink::caught_up`]) while
/// the guest runs: a vCPU that has not exited for this long is kicked.
pub const CAUGHT_UP_INTERVAL: Duration = Duration::from_millis(100);

/// Longest a stop request waits for the guest's next port write when console bytes wait
/// for the end of their line: replay compares console output only at a port write, so
/// the recording ends there (else the bytes are left out of it).
pub const STOP_GRACE: Duration = Duration::from_millis(100);

impl Recorder {
    /// Creates the machine and loads the kernel. Nothing runs yet.
    pub fn new(config: RecordConfig) -> Result<Recorder, RecorderError> {
        // What the guest observes through CPUID depends on the host CPU it runs on:
        // probe and record on one CPU, and run the vCPU there.
        let cpu = crate::cpuid::pin_current_thread()?;
        // Checked before the machine is made: a Linux kernel's vCPU is given a CPUID
        // table without the features it must not use.
        let format = loader::detect_format(&config.kernel)?;
        if !format.is_linux() && !config.cmdline.is_empty() {
            return Err(loader::LoadError::CommandLineNeedsLinux.into());
        }
        let symbols = match &config.vmlinux {
            Some(elf) => symbols::vmlinux_symbols(elf)?,
            None => symbols::kernel_symbols(&config.kernel),
        };
        let given = if format.is_linux() {
            let supported = krr_kvm::Vm::supported_cpuid().map_err(RecorderError::CreateVm)?;
            Some(crate::linux::without_unreplayable_features(&supported))
        } else {
            None
        };
        let mut vm = crate::vm::create(config.memory, given.as_deref())?;
        let cpuid = crate::cpuid::observe(vm.cpuid())?;
        let quirks = crate::quirks::measure(&cpuid)?;
        // The MSRs a guest given this CPUID table can read and write.
        let msrs = crate::quirks::measure_msrs(vm.cpuid())?;
        let kernel_command_line = if format.is_linux() {
            crate::linux::kernel_command_line(
                &crate::linux::host_command_line(&cpuid)?,
                &config.cmdline,
            )
        } else {
            String::new()
        };
        let loaded = loader::load_kernel(
            &mut vm,
            &config.kernel,
            loader::LinuxBoot {
                cmdline: &kernel_command_line,
                initrd: config.initrd.as_deref(),
            },
        )?;
        vm.write(RING_GPA, &agent_ring::initial_header().to_bytes())
            .map_err(RecorderError::WriteRingHeader)?;
        let counter: Box<dyn CounterSource> = match config.counter {
            CounterChoice::Auto if KvmInsnEmulation::host_counts_ring0()? => {
                Box::new(KvmInsnEmulation::open(&vm).ok_or(CounterError::Vanished)?)
            }
            _ => Box::new(NoCounter),
        };
        let devices = Devices::new(config.disk.clone())?;
        let capture = Capture::new(counter, config.capture, config.max_kernel_delay);
        Ok(Recorder {
            vm,
            devices,
            capture,
            loaded,
            kernel_command_line,
            symbols,
            host: Host {
                cpu,
                cpuid,
                quirks,
                msrs,
            },
            exits: 0,
            stop_seen: None,
            input_incomplete: false,
            config,
        })
    }

    pub fn counter_kind(&self) -> CounterSourceKind {
        self.capture.counter_kind()
    }

    pub fn kernel_entry(&self) -> u64 {
        self.loaded.entry
    }

    /// The header contents and the initial snapshot (all non-zero pages).
    pub fn start(&self) -> Result<RecordStart, RecorderError> {
        let cpu = self.vm.cpu_state().map_err(RecorderError::Snapshot)?;
        let mut pages = Vec::new();
        let mut page = vec![0u8; PAGE_SIZE];
        for region in self.vm.regions() {
            for gpa in (region.gpa..region.gpa + region.size).step_by(PAGE_SIZE) {
                self.vm
                    .read(gpa, &mut page)
                    .map_err(RecorderError::Snapshot)?;
                if page.iter().any(|&b| b != 0) {
                    pages.push(SnapshotPage {
                        gpa,
                        data: page.clone(),
                    });
                }
            }
        }
        let sha: [u8; 32] = Sha256::digest(&self.config.kernel).into();
        // Embedded only where it is an ELF (what replay reads symbols and lines from),
        // and small: a Linux vmlinux with DWARF is tens of MB, replay is given it.
        let elf = match (&self.config.vmlinux, self.loaded.format) {
            (Some(vmlinux), _) => Some(vmlinux),
            (None, KernelFormat::Elf64 | KernelFormat::LinuxElf) => Some(&self.config.kernel),
            (None, KernelFormat::BzImage) => None,
        };
        let embedded = elf.filter(|e| e.len() <= self.config.embed_kernel_limit);
        Ok(RecordStart {
            machine: MachineConfig {
                regions: self.vm.regions().to_vec(),
                tsc_khz: self.vm.vcpu().get_tsc_khz().ok(),
                counter: self.capture.counter_kind(),
                quirks: self.host.quirks.clone(),
                msrs: self.host.msrs.clone(),
            },
            cpuid: self.host.cpuid.clone(),
            kernel: KernelIdentity {
                name: self.config.kernel_name.clone(),
                size: self.config.kernel.len() as u64,
                sha256: sha,
            },
            symbols: self.symbols.clone(),
            kernel_image: embedded.cloned(),
            kernel_command_line: self.kernel_command_line.clone(),
            snapshot: Snapshot { cpu, pages },
        })
    }

    /// Runs the guest until it powers off, `stop` is set, or it fails. Events go to
    /// `sink` in execution order.
    pub fn run(
        &mut self,
        sink: &mut dyn EventSink,
        stop: &AtomicBool,
    ) -> Result<RecordOutcome, RecorderError> {
        let started = Instant::now();
        crate::cpuid::pin_thread(self.host.cpu)?;
        let wait_before = crate::cpuid::thread_run_delay();
        let kicker = self.vm.accept_kicks();
        let clock = LoopClock::new();
        let done = AtomicBool::new(false);
        let end = std::thread::scope(|scope| {
            let timer = scope.spawn(|| timer_thread(kicker, &clock, &done, stop));
            let r = self.run_loop(sink, stop, &clock);
            done.store(true, Ordering::SeqCst);
            let _ = timer.join();
            r
        });
        let end = match end {
            Ok(e) => e,
            Err(RecorderError::Ring(e)) => EndReason::GuestError(format!("agent ring: {e}")),
            Err(e) => return Err(e),
        };
        // Whatever the reason, flush what the guest already produced.
        self.capture.flush_console();
        self.capture.drain(sink)?;
        Ok(RecordOutcome {
            end,
            kernel_instructions: self.capture.icount(),
            duration: started.elapsed(),
            exits: self.exits,
            counts: self.capture.counts(),
            cpu: self.host.cpu,
            cpu_wait: crate::cpuid::thread_run_delay()
                .zip(wait_before)
                .map(|(after, before)| after.saturating_sub(before)),
        })
    }

    fn run_loop(
        &mut self,
        sink: &mut dyn EventSink,
        stop: &AtomicBool,
        clock: &LoopClock,
    ) -> Result<EndReason, RecorderError> {
        self.capture.start()?;
        self.stop_seen = None;
        let mut last = ExitKind::Deterministic;
        loop {
            if self.may_stop(stop) {
                return Ok(EndReason::Stopped);
            }
            self.tick_timer(clock);
            self.inject_pending(last)?;
            self.capture.drain(sink)?;
            sink.caught_up().map_err(RecorderError::Sink)?;
            clock.caught_up();
            let exit = self.vm.run().map_err(RecorderError::Run)?;
            self.input_incomplete = false;
            self.exits += 1;
            last = match exit {
                Exit::IoOut { port, data } => {
                    self.capture.at_deterministic_exit(&self.vm)?;
                    if let Some(end) = self.port_out(port, &data)? {
                        return Ok(end);
                    }
                    if stop.load(Ordering::SeqCst) {
                        // A console line still pending is recorded at this write, where
                        // replay compares it.
                        self.capture.flush_console();
                        return Ok(EndReason::Stopped);
                    }
                    // Digests only where the instruction has completed (after an `out`
                    // RIP is past it; at an `in` it is not yet), so replay sees the
                    // same state at the same icount.
                    if self.exits.is_multiple_of(self.config.digest_interval) {
                        self.digest();
                    }
                    ExitKind::Deterministic
                }
                Exit::IoIn { port, size, len } => {
                    self.capture.at_deterministic_exit(&self.vm)?;
                    if let Some(end) = self.port_in(port, size, len)? {
                        return Ok(end);
                    }
                    self.input_incomplete = true;
                    ExitKind::Deterministic
                }
                Exit::MmioRead { gpa, len } => {
                    self.capture.at_deterministic_exit(&self.vm)?;
                    if let Some(end) = self.mmio_read(gpa, len)? {
                        return Ok(end);
                    }
                    self.input_incomplete = true;
                    ExitKind::Deterministic
                }
                Exit::MmioWrite { gpa, data } => {
                    self.capture.at_deterministic_exit(&self.vm)?;
                    if let Some(end) = self.mmio_write(gpa, &data)? {
                        return Ok(end);
                    }
                    ExitKind::Deterministic
                }
                Exit::Hlt => {
                    self.capture.at_deterministic_exit(&self.vm)?;
                    if let Some(end) = self.on_hlt(clock, stop)? {
                        return Ok(end);
                    }
                    ExitKind::Deterministic
                }
                Exit::IrqWindowOpen => {
                    self.capture.sync(&self.vm)?;
                    ExitKind::Window
                }
                Exit::Interrupted => {
                    self.vm.clear_kick();
                    self.capture.sync(&self.vm)?;
                    ExitKind::Async
                }
                Exit::Shutdown => {
                    self.capture.sync(&self.vm)?;
                    return Ok(EndReason::GuestError(format!(
                        "triple fault (shutdown) at rip {:#x}",
                        self.rip()
                    )));
                }
                Exit::InternalError { suberror, data } => {
                    self.capture.sync(&self.vm)?;
                    return Ok(EndReason::GuestError(format!(
                        "KVM internal error (suberror {suberror}) at rip {:#x}, data \
                         {data:x?}: the guest used an instruction this host cannot run at \
                         ring 0",
                        self.rip()
                    )));
                }
                Exit::Other(what) => {
                    self.capture.sync(&self.vm)?;
                    return Ok(EndReason::GuestError(format!(
                        "unexpected VM exit {what} at rip {:#x}",
                        self.rip()
                    )));
                }
            };
        }
    }

    /// Whether the recording ends now on a stop request: at once, unless console bytes
    /// wait for the end of their line; those wait (at most [`STOP_GRACE`]) for the
    /// guest's next port write, which ends it where replay can compare them.
    fn may_stop(&mut self, stop: &AtomicBool) -> bool {
        if !stop.load(Ordering::SeqCst) {
            return false;
        }
        if !self.capture.console_pending() {
            return true;
        }
        let seen = *self.stop_seen.get_or_insert_with(Instant::now);
        if seen.elapsed() < STOP_GRACE {
            return false;
        }
        let dropped = self.capture.discard_console_line();
        tracing::warn!(
            "the guest wrote no port within {STOP_GRACE:?} of the stop: the last {} console \
             bytes ({:?}, a line without its end) are not in the recording (replay still \
             shows them)",
            dropped.len(),
            String::from_utf8_lossy(&dropped)
        );
        true
    }

    fn rip(&self) -> u64 {
        self.vm.vcpu().sync_regs().regs.rip
    }

    /// One access to the devices, now: what it asks of the machine.
    fn access(&self, f: impl FnOnce(&Devices, &mut Io<'_>)) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ram = GuestRam(&self.vm);
        f(
            &self.devices,
            &mut Io::new(Instant::now(), &ram, &mut effects),
        );
        effects
    }

    /// An `in`, or a chunk of `len / size` elements of a string input (`ins`, `rep
    /// ins`): each element is one read of the device, recorded as its own event (replay
    /// supplies them one by one), and together they complete the instruction.
    fn port_in(
        &mut self,
        port: u16,
        size: usize,
        len: usize,
    ) -> Result<Option<EndReason>, RecorderError> {
        let size = size.clamp(1, 4);
        let mut data = vec![0u8; len];
        let effects = self.access(|d, io| {
            for element in data.chunks_mut(size) {
                d.port_in(port, element, io);
            }
        });
        for element in data.chunks(size) {
            let mut value = [0u8; 4];
            value[..element.len()].copy_from_slice(element);
            self.capture
                .port_in(port, element.len(), u32::from_le_bytes(value));
        }
        self.vm
            .complete_io_in(&data)
            .map_err(RecorderError::CompleteInput)?;
        self.apply(effects)
    }

    /// An `out`; returns the end of the recording if the guest asked for it.
    fn port_out(&mut self, port: u16, data: &[u8]) -> Result<Option<EndReason>, RecorderError> {
        let effects = self.access(|d, io| d.port_out(port, data, io));
        self.apply(effects)
    }

    /// A read outside RAM: the device's value is recorded and completes the
    /// instruction.
    fn mmio_read(&mut self, gpa: u64, len: usize) -> Result<Option<EndReason>, RecorderError> {
        let mut data = [0u8; 8];
        let n = len.min(8);
        let effects = self.access(|d, io| d.mmio_read(gpa, &mut data[..n], io));
        self.capture.mmio_read(gpa, len, u64::from_le_bytes(data));
        self.vm
            .complete_mmio_read(&data[..n])
            .map_err(RecorderError::CompleteInput)?;
        self.apply(effects)
    }

    /// A write outside RAM.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<Option<EndReason>, RecorderError> {
        let effects = self.access(|d, io| d.mmio_write(gpa, data, io));
        self.apply(effects)
    }

    /// Carries out what an access asked of the machine, in order; returns the end of
    /// the recording if the guest asked for it.
    fn apply(&mut self, effects: Vec<Effect>) -> Result<Option<EndReason>, RecorderError> {
        for effect in effects {
            match effect {
                Effect::Console(byte) => self.capture.console(byte),
                Effect::MemoryWrite(w) => {
                    self.vm
                        .write(w.gpa, &w.data)
                        .map_err(|source| RecorderError::Dma {
                            gpa: w.gpa,
                            len: w.data.len(),
                            source,
                        })?;
                    self.capture.memory_write(w.gpa, WriteSource::Dma, w.data);
                }
                Effect::Irq(line) => self.devices.pic().raise(line),
                Effect::PowerOff => {
                    self.capture.flush_console();
                    return Ok(Some(EndReason::PowerOff));
                }
                Effect::Doorbell(rung) => {
                    if let Some(end) = self.on_doorbell(rung)? {
                        return Ok(Some(end));
                    }
                }
            }
        }
        Ok(None)
    }

    fn on_doorbell(&mut self, rung: Doorbell) -> Result<Option<EndReason>, RecorderError> {
        match rung {
            Doorbell::Code(DOORBELL_FULL | DOORBELL_FLUSH) => {
                // Records up to the doorbell were collected at this exit.
                self.capture.reset_ring(&self.vm)?;
                self.digest();
                Ok(None)
            }
            Doorbell::Code(other) => Ok(Some(EndReason::GuestError(format!(
                "agent doorbell rung with unknown code {other:#x}"
            )))),
            Doorbell::BadSize(len) => Ok(Some(EndReason::GuestError(format!(
                "agent doorbell written with a {len}-byte access (expected 4)"
            )))),
        }
    }

    fn on_hlt(
        &mut self,
        clock: &LoopClock,
        stop: &AtomicBool,
    ) -> Result<Option<EndReason>, RecorderError> {
        let rflags = self.vm.vcpu().sync_regs().regs.rflags;
        if rflags & RFLAGS_IF == 0 && self.devices.pic().pending_vector().is_none() {
            return Ok(Some(EndReason::GuestError(
                "the guest halted with interrupts disabled".into(),
            )));
        }
        // Wait for the next interrupt source.
        while self.devices.pic().pending_vector().is_none() {
            if self.may_stop(stop) {
                return Ok(Some(EndReason::Stopped));
            }
            let Some(next) = self.devices.timer_deadline() else {
                return Ok(Some(EndReason::GuestError(
                    "the guest halted with no interrupt source programmed".into(),
                )));
            };
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(Duration::from_millis(20)));
            }
            self.tick_timer(clock);
        }
        Ok(None)
    }

    /// Raises IRQ0 when the PIT period elapsed and publishes the next deadline for the
    /// timer thread.
    fn tick_timer(&mut self, clock: &LoopClock) {
        let now = Instant::now();
        if self.devices.timer_due(now) {
            self.devices.pic().raise(IRQ_TIMER);
        }
        clock.set_deadline(self.devices.timer_deadline());
        if self.devices.pic().pending_vector().is_some() {
            self.capture.policy().interrupt_pending(now);
        }
    }

    /// Injects the pending interrupt where the policy ([`crate::capture::InjectionPolicy`])
    /// allows, and records where.
    fn inject_pending(&mut self, last: ExitKind) -> Result<(), RecorderError> {
        let Some(vector) = self.devices.pic().pending_vector() else {
            self.vm.request_interrupt_window(false);
            self.capture.policy().no_interrupt_pending();
            return Ok(());
        };
        if self.input_incomplete {
            // KVM would complete the input before the guest takes the interrupt: complete
            // it first, so that the interrupt is recorded where it is taken, after the
            // instruction (the position of the exit already counts it).
            self.vm
                .complete_pending_input()
                .map_err(RecorderError::CompleteInput)?;
            self.input_incomplete = false;
        }
        let regs = self.vm.vcpu().sync_regs();
        let user_mode = regs.sregs.cs.dpl == 3;
        let ready = self.vm.ready_for_interrupt() && regs.regs.rflags & RFLAGS_IF != 0;
        if !ready {
            self.vm.request_interrupt_window(true);
            return Ok(());
        }
        let point = match self
            .capture
            .policy()
            .decide(last, user_mode, Instant::now())
        {
            Injection::Wait => return Ok(()),
            // Becomes an entry from user mode, recorded by the agent.
            Injection::User => None,
            Injection::Icount => Some(InjectionPoint::Icount),
            Injection::AfterExit => Some(InjectionPoint::AfterExit),
            Injection::Signature { since_position } => Some(InjectionPoint::Signature {
                regs_digest: regs_digest(&gprs(&regs.regs), regs.regs.rflags),
                stack_digest: self.stack_digest(regs.regs.rsp),
                since_position_ns: u64::try_from(since_position.as_nanos()).unwrap_or(u64::MAX),
            }),
        };
        let vector = self.devices.pic().acknowledge().unwrap_or(vector);
        self.vm
            .inject_interrupt(vector)
            .map_err(|source| RecorderError::Inject { vector, source })?;
        self.vm.request_interrupt_window(false);
        self.capture.policy().no_interrupt_pending();
        if let Some(point) = point {
            self.capture.kernel_interrupt(vector, regs.regs.rip, point);
        }
        Ok(())
    }

    fn digest(&mut self) {
        let regs = self.vm.vcpu().sync_regs();
        if regs.sregs.cs.dpl != 0 {
            return; // user registers: replay does not have them
        }
        let registers = DigestRegisters::Full {
            gpr: gprs(&regs.regs),
            rflags: regs.regs.rflags,
        };
        let stack = self.stack_digest(regs.regs.rsp);
        self.capture.digest(regs.regs.rip, registers, stack);
    }

    /// The digest of the top of the stack at `rsp` (kernel mode), or None where RSP's
    /// page is not mapped or is user memory (which replay does not reproduce).
    fn stack_digest(&self, rsp: u64) -> Option<u64> {
        let t = self.vm.vcpu().translate_gva(rsp).ok()?;
        if t.valid == 0 || t.usermode != 0 {
            return None;
        }
        let mut top = [0u8; STACK_DIGEST_BYTES as usize];
        let top = &mut top[..stack_digest_len(rsp)];
        self.vm.read(t.physical_address, top).ok()?;
        Some(stack_digest(top))
    }
}

/// What the recording loop tells the timer thread: the next timer deadline, and when
/// it last handed everything to the sink; in nanoseconds from `base`.
struct LoopClock {
    base: Instant,
    /// `u64::MAX` when no timer runs.
    deadline: AtomicU64,
    caught_up: AtomicU64,
}

impl LoopClock {
    fn new() -> LoopClock {
        LoopClock {
            base: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            caught_up: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn set_deadline(&self, next: Option<Instant>) {
        let next = next.map_or(u64::MAX, |d| {
            u64::try_from(d.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
        });
        self.deadline.store(next, Ordering::SeqCst);
    }

    fn caught_up(&self) {
        self.caught_up.store(self.now(), Ordering::Relaxed);
    }
}

/// Kicks the vCPU when a timer deadline passes, when the loop has not come back to its
/// sink for [`CAUGHT_UP_INTERVAL`], or when a stop is requested, so that the recorder
/// gets control while the guest computes without exits. After a stop it kicks again
/// every [`STOP_KICK_INTERVAL`] until the loop ends (a stop may wait for the guest, at
/// most [`STOP_GRACE`]).
fn timer_thread(kicker: Kicker, clock: &LoopClock, done: &AtomicBool, stop: &AtomicBool) {
    let mut kicked_for = u64::MAX;
    let mut kicked_quiet_since = u64::MAX;
    let mut stop_kicked: Option<Instant> = None;
    let quiet = u64::try_from(CAUGHT_UP_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_micros(500));
        if stop.load(Ordering::SeqCst)
            && stop_kicked.is_none_or(|t| t.elapsed() >= STOP_KICK_INTERVAL)
        {
            stop_kicked = Some(Instant::now());
            kicker.kick();
            continue;
        }
        let now = clock.now();
        let d = clock.deadline.load(Ordering::SeqCst);
        if d != u64::MAX && now >= d && kicked_for != d {
            kicked_for = d;
            kicker.kick();
        }
        let caught_up = clock.caught_up.load(Ordering::Relaxed);
        if now.saturating_sub(caught_up) >= quiet && kicked_quiet_since != caught_up {
            kicked_quiet_since = caught_up;
            kicker.kick();
        }
    }
}

/// How often the timer thread kicks a vCPU whose recording is asked to stop.
const STOP_KICK_INTERVAL: Duration = Duration::from_millis(20);
