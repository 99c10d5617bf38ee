//! krr-tui recorder: a single-vCPU KVM virtual machine that runs a guest and captures
//! every non-deterministic input the guest kernel sees (DESIGN.md sections 1 and 3).
//!
//! * [`vm`]: the recording machine's memory map on a [`krr_kvm::Vm`].
//! * [`image`]: the kernel and disk images, read with limits.
//! * [`loader`]: ELF, Linux vmlinux and bzImage loading into the long-mode environment,
//!   the Linux boot parameters and initrd.
//! * [`linux`]: the CPU features a Linux guest must not use here, and the command line
//!   that turns off those it still sees.
//! * [`devices`]: the device trait, the port and MMIO buses, and the devices: serial
//!   port, PIC, PIT, fw_cfg (the DMA block device), power-off and the agent's doorbell.
//! * [`capture`]: what is recorded and when: positions, the agent ring, the console,
//!   pending events, and the interrupt-injection policy.
//! * [`agent_ring`]: the guest agent ABI and its ring reader.
//! * [`counter`]: instruction-counter sources.
//! * [`cpuid`]: the CPU the recording runs on and the CPUID values the guest observes
//!   there (recorded for replay).
//! * [`quirks`]: how the host executes guest kernel code where CPUID does not say, and
//!   what its `rdmsr`/`wrmsr` do with the MSRs the replay CPU does not model.
//! * [`record`]: the recorder: the machine, its exits, and the recording loop.

pub mod agent_ring;
pub mod capture;
pub mod counter;
pub mod cpuid;
pub mod devices;
pub mod image;
pub mod linux;
pub mod loader;
pub mod quirks;
pub mod record;
pub mod symbols;
pub mod vm;

pub use record::{
    CounterChoice, EndReason, EventSink, RecordConfig, RecordOutcome, RecordStart, Recorder,
    SinkError,
};

/// Errors of the recorder, by operation; the cause is the error's source.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("pinning the recording to one CPU")]
    Pin(#[from] cpuid::PinError),
    #[error("guest memory size {size:#x}: it must be a positive multiple of 4 KiB below {max:#x}")]
    MemorySize { size: u64, max: u64 },
    #[error("creating the virtual machine")]
    CreateVm(#[source] krr_kvm::Error),
    #[error("observing the CPUID values a guest sees")]
    ObserveCpuid(#[source] krr_kvm::Error),
    #[error("measuring the host's undefined results")]
    MeasureQuirks(#[source] krr_kvm::Error),
    #[error("measuring what the host's rdmsr and wrmsr do")]
    MeasureMsrs(#[source] krr_kvm::Error),
    #[error("loading the kernel")]
    Kernel(#[from] loader::LoadError),
    #[error("making the Linux kernel's command line")]
    CommandLine(#[from] linux::CommandLineError),
    #[error("reading the kernel's symbols")]
    Symbols(#[from] symbols::SymbolsError),
    #[error("registering the devices")]
    Devices(#[from] devices::bus::BusError),
    #[error("instruction counter")]
    Counter(#[from] counter::CounterError),
    #[error("writing the agent ring's header")]
    WriteRingHeader(#[source] krr_kvm::Error),
    #[error("taking the initial snapshot")]
    Snapshot(#[source] krr_kvm::Error),
    #[error("running the vCPU")]
    Run(#[source] krr_kvm::Error),
    #[error("completing the guest's input")]
    CompleteInput(#[source] krr_kvm::Error),
    #[error("reading the agent ring")]
    ReadRing(#[source] krr_kvm::Error),
    #[error("resetting the agent ring")]
    ResetRing(#[source] krr_kvm::Error),
    #[error("writing {len} bytes of DMA at {gpa:#x}")]
    Dma {
        gpa: u64,
        len: usize,
        #[source]
        source: krr_kvm::Error,
    },
    #[error("injecting interrupt vector {vector:#x}")]
    Inject {
        vector: u8,
        #[source]
        source: krr_kvm::Error,
    },
    /// The guest broke the agent ring's protocol: the recording ends with a guest error.
    #[error("agent ring")]
    Ring(#[from] agent_ring::RingError),
    #[error("writing the recording")]
    Sink(#[source] SinkError),
}

/// Whether this machine can record: /dev/kvm exists and opens.
pub fn kvm_available() -> Result<(), String> {
    krr_kvm::available().map_err(|e| format!("/dev/kvm: {e}"))
}
