//! The recording loop: runs the guest, services its devices, decides when interrupts
//! are injected, and captures every non-deterministic input as an [`Event`].
//!
//! Where each event is recorded:
//! * port input, MMIO reads: [`Recorder::on_port_in`], [`Recorder::on_mmio_read`];
//! * DMA and VMM memory writes: [`Recorder::on_port_out`] (fw_cfg DMA, ring reset);
//! * kernel-mode interrupts: [`Recorder::inject_pending`];
//! * agent ring records (user entries, user reads, rdtsc...): [`Recorder::poll_ring`];
//! * console output and digests: [`Recorder::on_port_out`], [`Recorder::digest`].

use crate::agent_ring::{
    self, DOORBELL_FLUSH, DOORBELL_FULL, HEAD_OFFSET, PORT_COM1, PORT_DOORBELL, PORT_FW_CFG,
    PORT_FW_CFG_DATA, PORT_FW_CFG_DMA, PORT_PIC_MASTER, PORT_PIC_SLAVE, PORT_PIT, PORT_POWEROFF,
    RING_GPA, RING_REGION_SIZE, RingReader,
};
use crate::counter::{CounterSource, KvmInsnEmulation, NoCounter};
use crate::devices::fw_cfg::{DmaMemory, FwCfg};
use crate::devices::{pic::Pic, pit::Pit, serial::Serial};
use crate::loader::{self, LoadedKernel};
use crate::{RecorderError, symbols};
use krr_engine::event::{
    ConsoleOutput, Digest, DigestRegisters, Event, EventKind, InjectionPoint, KernelInterrupt,
    MemoryWrite, MmioRead, PortIn, RFLAGS_IF, WriteSource,
};
use krr_engine::icount::KvmCounterModel;
use krr_engine::state::{
    CounterSourceKind, CpuidEntry, KernelIdentity, MachineConfig, PAGE_SIZE, Quirks,
    STACK_DIGEST_BYTES, Snapshot, SnapshotPage, Symbol, regs_digest, stack_digest,
    stack_digest_len,
};
use krr_kvm::Vm;
use krr_kvm::kick::Kicker;
use krr_kvm::regs::gprs;
use kvm_ioctls::VcpuExit;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
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
    /// The kernel image (ELF64 or bzImage).
    pub kernel: Vec<u8>,
    /// How the kernel is named in the recording ("builtin:demo" or a file name).
    pub kernel_name: String,
    pub cmdline: String,
    /// Disk image exposed as the fw_cfg file `opt/krr/disk`.
    pub disk: Option<Vec<u8>>,
    pub memory: u64,
    pub counter: CounterChoice,
    /// Longest a pending interrupt waits for a deterministic exit while the guest runs
    /// kernel code, when there is no counter.
    pub max_kernel_delay: Duration,
    /// A digest every this many VM exits (and at every doorbell).
    pub digest_interval: u64,
    /// Embed the kernel image in the recording if it is at most this large.
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
    pub snapshot: Snapshot,
}

/// Where events go (the trace writer, or a vector in tests).
pub trait EventSink {
    fn event(&mut self, event: Event) -> Result<(), RecorderError>;
}

impl EventSink for Vec<Event> {
    fn event(&mut self, event: Event) -> Result<(), RecorderError> {
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
}

/// The exit the vCPU stopped at, for the injection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitKind {
    /// A port or MMIO access, or `hlt`: a point replay finds by itself.
    Deterministic,
    /// A kick from another thread: the guest stopped at an arbitrary instruction.
    Async,
    /// KVM reports the guest can take an interrupt now.
    Window,
}

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

pub struct Recorder {
    vm: Vm,
    config: RecordConfig,
    loaded: LoadedKernel,
    counter: Box<dyn CounterSource>,
    model: KvmCounterModel,
    pic: Pic,
    pit: Pit,
    serial: Serial,
    fw_cfg: FwCfg,
    ring: RingReader,
    ring_buf: Vec<u8>,
    console_line: Vec<u8>,
    pending: Vec<Event>,
    counts: [u64; EventKind::ALL.len()],
    exits: u64,
    /// Port and MMIO accesses and `hlt` exits so far (the position without a counter).
    deterministic_exits: u64,
    icount: u64,
    /// When the oldest undelivered interrupt became pending.
    pending_since: Option<Instant>,
    symbols: Vec<Symbol>,
    /// The CPU the vCPU thread is pinned to, and the CPUID values a guest observes there.
    cpu: usize,
    observed_cpuid: Vec<CpuidEntry>,
    quirks: Quirks,
    /// When the vCPU was last at a recorded position (a deterministic exit or a
    /// signature-placed interrupt): bounds replay's search for the next signature.
    last_position: Instant,
}

/// Standard PC interrupt line of the PIT.
const IRQ_TIMER: u8 = 0;

impl Recorder {
    /// Creates the machine and loads the kernel. Nothing runs yet.
    pub fn new(config: RecordConfig) -> Result<Recorder, RecorderError> {
        // What the guest observes through CPUID depends on the host CPU it runs on:
        // probe and record on one CPU, and run the vCPU there.
        let cpu = crate::cpuid::pin_current_thread()?;
        let mut vm = crate::vm::create(config.memory)?;
        let observed_cpuid = crate::cpuid::observe(vm.cpuid())?;
        let quirks = crate::quirks::measure(&observed_cpuid)?;
        let loaded = loader::load_kernel(&mut vm, &config.kernel, &config.cmdline)?;
        vm.write(RING_GPA, &agent_ring::initial_header().to_bytes())?;
        let symbols = symbols::kernel_symbols(&config.kernel);
        let counter: Box<dyn CounterSource> = match config.counter {
            CounterChoice::Auto if KvmInsnEmulation::host_counts_ring0()? => {
                Box::new(KvmInsnEmulation::open(&vm).ok_or_else(|| {
                    RecorderError::Counter("insn_emulation vanished after calibration".into())
                })?)
            }
            _ => Box::new(NoCounter),
        };
        let files = config
            .disk
            .clone()
            .map(|d| vec![(agent_ring::DISK_FW_CFG_NAME.to_string(), d)])
            .unwrap_or_default();
        Ok(Recorder {
            vm,
            loaded,
            counter,
            model: KvmCounterModel::default(),
            pic: Pic::new(),
            pit: Pit::new(),
            serial: Serial::new(),
            fw_cfg: FwCfg::new(files),
            ring: RingReader::new(),
            ring_buf: vec![0u8; RING_REGION_SIZE as usize],
            console_line: Vec::new(),
            pending: Vec::new(),
            counts: [0; EventKind::ALL.len()],
            exits: 0,
            deterministic_exits: 0,
            icount: 0,
            pending_since: None,
            symbols,
            cpu,
            observed_cpuid,
            quirks,
            last_position: Instant::now(),
            config,
        })
    }

    pub fn counter_kind(&self) -> CounterSourceKind {
        self.counter.kind()
    }

    pub fn kernel_entry(&self) -> u64 {
        self.loaded.entry
    }

    /// The header contents and the initial snapshot (all non-zero pages).
    pub fn start(&self) -> Result<RecordStart, RecorderError> {
        let cpu = self.vm.cpu_state()?;
        let mut pages = Vec::new();
        let mut page = vec![0u8; PAGE_SIZE];
        for region in self.vm.regions() {
            for gpa in (region.gpa..region.gpa + region.size).step_by(PAGE_SIZE) {
                self.vm.read(gpa, &mut page)?;
                if page.iter().any(|&b| b != 0) {
                    pages.push(SnapshotPage {
                        gpa,
                        data: page.clone(),
                    });
                }
            }
        }
        let sha: [u8; 32] = Sha256::digest(&self.config.kernel).into();
        let embed = self.config.kernel.len() <= self.config.embed_kernel_limit;
        Ok(RecordStart {
            machine: MachineConfig {
                regions: self.vm.regions().to_vec(),
                tsc_khz: self.vm.vcpu().get_tsc_khz().ok(),
                counter: self.counter.kind(),
                quirks: self.quirks.clone(),
            },
            cpuid: self.observed_cpuid.clone(),
            kernel: KernelIdentity {
                name: self.config.kernel_name.clone(),
                size: self.config.kernel.len() as u64,
                sha256: sha,
            },
            symbols: self.symbols.clone(),
            kernel_image: embed.then(|| self.config.kernel.clone()),
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
        crate::cpuid::pin_thread(self.cpu)?;
        let kicker = self.vm.accept_kicks();
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let end = std::thread::scope(|scope| {
            let timer = {
                let deadline = deadline.clone();
                let done = done.clone();
                scope.spawn(move || timer_thread(kicker, base, &deadline, &done, stop))
            };
            let r = self.run_loop(sink, stop, base, &deadline);
            done.store(true, Ordering::SeqCst);
            let _ = timer.join();
            r
        });
        let end = match end {
            Ok(e) => e,
            Err(RecorderError::Ring(e)) => EndReason::GuestError(format!("agent ring: {e}")),
            Err(RecorderError::Guest(e)) => EndReason::GuestError(e),
            Err(e) => return Err(e),
        };
        // Whatever the reason, flush what the guest already produced.
        self.flush_console();
        self.drain_pending(sink)?;
        Ok(RecordOutcome {
            end,
            kernel_instructions: self.icount,
            duration: started.elapsed(),
            exits: self.exits,
            counts: self.counts,
        })
    }

    fn run_loop(
        &mut self,
        sink: &mut dyn EventSink,
        stop: &AtomicBool,
        base: Instant,
        deadline: &AtomicU64,
    ) -> Result<EndReason, RecorderError> {
        let start_raw = self.counter.read()?;
        self.last_position = Instant::now();
        self.model = KvmCounterModel::new(start_raw);
        let mut last = ExitKind::Deterministic;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(EndReason::Stopped);
            }
            self.tick_timer(base, deadline);
            self.inject_pending(last)?;
            self.drain_pending(sink)?;
            let exit = self.vm.vcpu_mut().run();
            self.exits += 1;
            let kind = match exit {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let data = data.to_vec();
                    self.at_deterministic_exit()?;
                    if let Some(end) = self.on_port_out(port, &data)? {
                        return Ok(end);
                    }
                    // Digests only where the instruction has completed (after an `out`
                    // RIP is past it; at an `in` it is not yet), so replay sees the
                    // same state at the same icount.
                    if self.exits.is_multiple_of(self.config.digest_interval) {
                        self.digest();
                    }
                    ExitKind::Deterministic
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    let size = data.len();
                    self.at_deterministic_exit()?;
                    let value = self.on_port_in(port, size)?;
                    self.fill_io_data(value, size);
                    ExitKind::Deterministic
                }
                Ok(VcpuExit::MmioRead(gpa, data)) => {
                    let size = data.len();
                    data.fill(0xff);
                    self.at_deterministic_exit()?;
                    self.on_mmio_read(gpa, size)?;
                    ExitKind::Deterministic
                }
                Ok(VcpuExit::MmioWrite(..)) => {
                    self.at_deterministic_exit()?;
                    ExitKind::Deterministic
                }
                Ok(VcpuExit::Hlt) => {
                    self.at_deterministic_exit()?;
                    if let Some(end) = self.on_hlt(base, deadline, stop)? {
                        return Ok(end);
                    }
                    ExitKind::Deterministic
                }
                Ok(VcpuExit::IrqWindowOpen) => {
                    self.sync_position()?;
                    ExitKind::Window
                }
                Ok(VcpuExit::Intr) => {
                    self.vm.clear_kick();
                    self.sync_position()?;
                    ExitKind::Async
                }
                Err(e) if e.errno() == libc::EINTR => {
                    self.vm.clear_kick();
                    self.sync_position()?;
                    ExitKind::Async
                }
                Ok(VcpuExit::Shutdown) => {
                    self.sync_position()?;
                    return Ok(EndReason::GuestError(format!(
                        "triple fault (shutdown) at rip {:#x}",
                        self.vm.vcpu().sync_regs().regs.rip
                    )));
                }
                Ok(VcpuExit::InternalError) => {
                    self.sync_position()?;
                    return Ok(EndReason::GuestError(self.internal_error()));
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    self.sync_position()?;
                    return Ok(EndReason::GuestError(format!(
                        "unexpected VM exit {what} at rip {:#x}",
                        self.vm.vcpu().sync_regs().regs.rip
                    )));
                }
                Err(e) => return Err(RecorderError::kvm("KVM_RUN", e)),
            };
            last = kind;
        }
    }

    /// Writes the value of a pending `in` into kvm_run (the exit's data area).
    fn fill_io_data(&mut self, value: u32, size: usize) {
        let run = self.vm.vcpu_mut().get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_IO in, so the io member of the union is
        // the active one, and data_offset/size/count describe bytes inside the kvm_run
        // mapping, which spans the whole vCPU mmap area.
        unsafe {
            let io = run.__bindgen_anon_1.io;
            let len = (io.size as usize * io.count as usize)
                .min(size.max(1))
                .min(4);
            let p = (run as *mut kvm_bindings::kvm_run as *mut u8).add(io.data_offset as usize);
            let bytes = value.to_le_bytes();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, len);
        }
    }

    /// An exit that replay meets at the same instruction: a recorded position.
    fn at_deterministic_exit(&mut self) -> Result<(), RecorderError> {
        self.deterministic_exits += 1;
        self.last_position = Instant::now();
        self.sync_position()
    }

    /// Reads the counter and collects the agent's new ring records: done at every exit,
    /// so events stay in execution order.
    fn sync_position(&mut self) -> Result<(), RecorderError> {
        if !self.config.capture {
            return Ok(());
        }
        let raw = self.counter.read()?;
        let first = self.pending.len();
        self.poll_ring()?;
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

    fn poll_ring(&mut self) -> Result<(), RecorderError> {
        // The header, then only the records appended since the last poll: this runs at
        // every exit, and the region is a megabyte.
        let header = agent_ring::RING_HEADER_SIZE;
        self.vm.read(RING_GPA, &mut self.ring_buf[..header])?;
        let unread = self.ring.unread(&self.ring_buf)?;
        if !unread.is_empty() {
            self.vm
                .read(RING_GPA + unread.start as u64, &mut self.ring_buf[unread])?;
        }
        let first = self.pending.len();
        self.ring
            .poll(&self.ring_buf, self.icount, &mut self.pending)?;
        for e in &self.pending[first..] {
            if let Event::UserEntry(entry) = e {
                self.model.observe_entry(entry);
            }
        }
        Ok(())
    }

    fn push(&mut self, e: Event) {
        if self.config.capture {
            self.pending.push(e);
        }
    }

    fn drain_pending(&mut self, sink: &mut dyn EventSink) -> Result<(), RecorderError> {
        for e in self.pending.drain(..) {
            self.counts[e.kind().index()] += 1;
            sink.event(e)?;
        }
        Ok(())
    }

    fn on_port_in(&mut self, port: u16, size: usize) -> Result<u32, RecorderError> {
        let now = Instant::now();
        let value: u32 = match port {
            p if (PORT_COM1..PORT_COM1 + 8).contains(&p) => self.serial.read(p - PORT_COM1) as u32,
            p if p == PORT_PIC_MASTER
                || p == PORT_PIC_MASTER + 1
                || p == PORT_PIC_SLAVE
                || p == PORT_PIC_SLAVE + 1 =>
            {
                self.pic.read(p) as u32
            }
            p if (PORT_PIT..PORT_PIT + 4).contains(&p) => self.pit.read(p, now) as u32,
            PORT_FW_CFG_DATA => self.fw_cfg.read_data() as u32,
            // Absent devices read as all ones.
            _ => u32::MAX,
        };
        let value = match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        };
        self.push(Event::PortIn(PortIn {
            icount: self.icount,
            port,
            size: size as u8,
            value,
        }));
        Ok(value)
    }

    fn on_mmio_read(&mut self, gpa: u64, size: usize) -> Result<(), RecorderError> {
        let value = if size >= 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        };
        self.push(Event::MmioRead(MmioRead {
            icount: self.icount,
            gpa,
            size: size as u8,
            value,
        }));
        Ok(())
    }

    /// Handles an `out`; returns the end of the recording if the guest asked for it.
    fn on_port_out(&mut self, port: u16, data: &[u8]) -> Result<Option<EndReason>, RecorderError> {
        let byte = data.first().copied().unwrap_or(0);
        match port {
            PORT_POWEROFF => {
                self.flush_console();
                return Ok(Some(EndReason::PowerOff));
            }
            PORT_DOORBELL => return self.on_doorbell(data),
            p if (PORT_COM1..PORT_COM1 + 8).contains(&p) => {
                if let Some(b) = self.serial.write(p - PORT_COM1, byte) {
                    self.console_line.push(b);
                    if b == b'\n' || self.console_line.len() >= 256 {
                        self.flush_console();
                    }
                }
            }
            p if p == PORT_PIC_MASTER
                || p == PORT_PIC_MASTER + 1
                || p == PORT_PIC_SLAVE
                || p == PORT_PIC_SLAVE + 1 =>
            {
                self.pic.write(p, byte)
            }
            p if (PORT_PIT..PORT_PIT + 4).contains(&p) => self.pit.write(p, byte, Instant::now()),
            PORT_FW_CFG if data.len() == 2 => {
                self.fw_cfg.select(u16::from_le_bytes([data[0], data[1]]));
            }
            p if (PORT_FW_CFG_DMA..PORT_FW_CFG_DMA + 8).contains(&p) && data.len() == 4 => {
                let raw = [data[0], data[1], data[2], data[3]];
                let writes = self
                    .fw_cfg
                    .write_dma(p - PORT_FW_CFG_DMA, raw, &GuestRam(&self.vm));
                for w in writes {
                    self.vm.write(w.gpa, &w.data)?;
                    self.push(Event::MemoryWrite(MemoryWrite {
                        icount: self.icount,
                        gpa: w.gpa,
                        source: WriteSource::Dma,
                        data: w.data,
                    }));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn on_doorbell(&mut self, data: &[u8]) -> Result<Option<EndReason>, RecorderError> {
        if data.len() != 4 {
            return Ok(Some(EndReason::GuestError(format!(
                "agent doorbell written with a {}-byte access (expected 4)",
                data.len()
            ))));
        }
        let code = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match code {
            DOORBELL_FULL | DOORBELL_FLUSH => {
                // Records up to the doorbell were collected by sync_position; reset the
                // ring as a recorded VMM write so replay resets it at the same point.
                self.vm.write(RING_GPA + HEAD_OFFSET, &0u64.to_le_bytes())?;
                self.ring.reset();
                self.push(Event::MemoryWrite(MemoryWrite {
                    icount: self.icount,
                    gpa: RING_GPA + HEAD_OFFSET,
                    source: WriteSource::Vmm,
                    data: 0u64.to_le_bytes().to_vec(),
                }));
                self.digest();
                Ok(None)
            }
            other => Ok(Some(EndReason::GuestError(format!(
                "agent doorbell rung with unknown code {other:#x}"
            )))),
        }
    }

    fn on_hlt(
        &mut self,
        base: Instant,
        deadline: &AtomicU64,
        stop: &AtomicBool,
    ) -> Result<Option<EndReason>, RecorderError> {
        let rflags = self.vm.vcpu().sync_regs().regs.rflags;
        if rflags & RFLAGS_IF == 0 && self.pic.pending_vector().is_none() {
            return Ok(Some(EndReason::GuestError(
                "the guest halted with interrupts disabled".into(),
            )));
        }
        // Wait for the next interrupt source.
        while self.pic.pending_vector().is_none() {
            if stop.load(Ordering::SeqCst) {
                return Ok(Some(EndReason::Stopped));
            }
            let Some(next) = self.pit.next_deadline() else {
                return Ok(Some(EndReason::GuestError(
                    "the guest halted with no interrupt source programmed".into(),
                )));
            };
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(Duration::from_millis(20)));
            }
            self.tick_timer(base, deadline);
        }
        Ok(None)
    }

    /// Raises IRQ0 when the PIT period elapsed and publishes the next deadline for the
    /// timer thread.
    fn tick_timer(&mut self, base: Instant, deadline: &AtomicU64) {
        let now = Instant::now();
        if self.pit.due(now) {
            self.pic.raise(IRQ_TIMER);
        }
        let next = self
            .pit
            .next_deadline()
            .map(|d| d.saturating_duration_since(base).as_nanos() as u64)
            .unwrap_or(u64::MAX);
        deadline.store(next, Ordering::SeqCst);
        if self.pic.pending_vector().is_some() {
            self.pending_since.get_or_insert(now);
        }
    }

    /// The injection policy (DESIGN.md section 3).
    fn inject_pending(&mut self, last: ExitKind) -> Result<(), RecorderError> {
        let Some(vector) = self.pic.pending_vector() else {
            self.vm.vcpu_mut().get_kvm_run().request_interrupt_window = 0;
            self.pending_since = None;
            return Ok(());
        };
        let regs = self.vm.vcpu().sync_regs();
        let user_mode = regs.sregs.cs.dpl == 3;
        let run = self.vm.vcpu_mut().get_kvm_run();
        let ready = run.ready_for_interrupt_injection != 0 && regs.regs.rflags & RFLAGS_IF != 0;
        if !ready {
            run.request_interrupt_window = 1;
            return Ok(());
        }
        let has_counter = self.counter.kind() != CounterSourceKind::None;
        let waited = self.pending_since.map(|t| t.elapsed()).unwrap_or_default();
        let point = if user_mode {
            // Becomes an entry from user mode, recorded by the agent.
            None
        } else {
            match (last, has_counter) {
                (_, true) => Some(InjectionPoint::Icount),
                (ExitKind::Deterministic, false) => Some(InjectionPoint::AfterExit),
                (ExitKind::Async | ExitKind::Window, false)
                    if waited >= self.config.max_kernel_delay =>
                {
                    let now = Instant::now();
                    let since = now.duration_since(self.last_position);
                    self.last_position = now;
                    let (rsp, regs_digest) = (
                        regs.regs.rsp,
                        regs_digest(&gprs(&regs.regs), regs.regs.rflags),
                    );
                    Some(InjectionPoint::Signature {
                        regs_digest,
                        stack_digest: self.stack_digest(rsp),
                        since_position_ns: u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
                    })
                }
                _ => return Ok(()), // wait for a deterministic exit
            }
        };
        let vector = self.pic.acknowledge().unwrap_or(vector);
        self.vm.inject_interrupt(vector)?;
        self.vm.vcpu_mut().get_kvm_run().request_interrupt_window = 0;
        self.pending_since = None;
        if let Some(point) = point {
            self.push(Event::KernelInterrupt(KernelInterrupt {
                icount: self.icount,
                vector,
                rip: regs.regs.rip,
                point,
            }));
        }
        Ok(())
    }

    fn digest(&mut self) {
        let regs = self.vm.vcpu().sync_regs();
        if regs.sregs.cs.dpl != 0 {
            return; // user registers: replay does not have them
        }
        let (rip, rsp, registers) = (
            regs.regs.rip,
            regs.regs.rsp,
            DigestRegisters::Full {
                gpr: gprs(&regs.regs),
                rflags: regs.regs.rflags,
            },
        );
        self.push(Event::Digest(Digest {
            icount: self.icount,
            rip,
            registers,
            stack: self.stack_digest(rsp),
        }));
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

    fn flush_console(&mut self) {
        if self.console_line.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.console_line);
        self.push(Event::Console(ConsoleOutput {
            icount: self.icount,
            bytes,
        }));
    }

    fn internal_error(&mut self) -> String {
        let rip = self.vm.vcpu().sync_regs().regs.rip;
        let run = self.vm.vcpu_mut().get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // union member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        format!(
            "KVM internal error (suberror {}) at rip {rip:#x}, data {:x?}: the guest used an \
             instruction this host cannot run at ring 0",
            internal.suberror,
            &internal.data[..n]
        )
    }
}

/// Kicks the vCPU when a timer deadline passes or a stop is requested, so that the
/// recorder gets control while the guest computes without exits.
fn timer_thread(
    kicker: Kicker,
    base: Instant,
    deadline: &AtomicU64,
    done: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut kicked_for = u64::MAX;
    let mut stop_kicked = false;
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_micros(500));
        if stop.load(Ordering::SeqCst) && !stop_kicked {
            stop_kicked = true;
            kicker.kick();
            continue;
        }
        let d = deadline.load(Ordering::SeqCst);
        let now = base.elapsed().as_nanos() as u64;
        if d != u64::MAX && now >= d && kicked_for != d {
            kicked_for = d;
            kicker.kick();
        }
    }
}
