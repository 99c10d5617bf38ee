//! krr-tui recorder: a single-vCPU KVM virtual machine that runs a guest and captures
//! every non-deterministic input the guest kernel sees (DESIGN.md sections 1 and 3).
//!
//! * [`vm`]: the KVM machine (memory, vCPU, state conversion).
//! * [`loader`]: ELF and bzImage loading, the long-mode entry state.
//! * [`devices`]: serial port, PIC, PIT, fw_cfg (the DMA block device).
//! * [`agent_ring`]: the guest agent ABI and its ring reader.
//! * [`counter`]: instruction-counter sources.
//! * [`cpuid`]: the CPUID values the guest observes (recorded for replay).
//! * [`quirks`]: how the host executes guest kernel code unlike a hardware CPU.
//! * [`record`]: the recording loop and the injection policy.

pub mod agent_ring;
pub mod counter;
pub mod cpuid;
pub mod devices;
pub mod kick;
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
    #[error("KVM: {op}: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
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
        RecorderError::Kvm { op, source }
    }
}

/// Whether this machine can record: /dev/kvm exists and opens.
pub fn kvm_available() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/kvm: {e}")),
    }
}
