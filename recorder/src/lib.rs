//! krr-tui recorder: a single-vCPU KVM virtual machine that runs a guest and captures
//! every non-deterministic input the guest kernel sees (DESIGN.md sections 1 and 3).
//!
//! * [`vm`]: the recording machine's memory map on a [`krr_kvm::Vm`].
//! * [`loader`]: ELF and bzImage loading into the long-mode environment.
//! * [`devices`]: serial port, PIC, PIT, fw_cfg (the DMA block device).
//! * [`agent_ring`]: the guest agent ABI and its ring reader.
//! * [`counter`]: instruction-counter sources.
//! * [`cpuid`]: the CPU the recording runs on and the CPUID values the guest observes
//!   there (recorded for replay).
//! * [`quirks`]: how the host executes guest kernel code where CPUID does not say.
//! * [`record`]: the recording loop and the injection policy.

pub mod agent_ring;
pub mod counter;
pub mod cpuid;
pub mod devices;
pub mod loader;
pub mod quirks;
pub mod record;
pub mod symbols;
pub mod vm;

pub use record::{
    CounterChoice, EndReason, EventSink, RecordConfig, RecordOutcome, RecordStart, Recorder,
};

/// Errors of the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("KVM")]
    Kvm(#[from] krr_kvm::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("kernel image: {0}")]
    Kernel(String),
    #[error("instruction counter: {0}")]
    Counter(String),
    #[error("guest: {0}")]
    Guest(String),
    #[error(transparent)]
    Ring(#[from] agent_ring::RingError),
    #[error("writing the recording: {0}")]
    Sink(String),
}

impl RecorderError {
    pub fn kvm(op: &'static str, source: kvm_ioctls::Error) -> Self {
        RecorderError::Kvm(krr_kvm::Error::kvm(op, source))
    }
}

/// Whether this machine can record: /dev/kvm exists and opens.
pub fn kvm_available() -> Result<(), String> {
    krr_kvm::available().map_err(|e| format!("/dev/kvm: {e}"))
}
