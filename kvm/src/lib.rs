//! krr-tui's KVM layer, used by the recorder and by the engine's differential tests: one
//! virtual machine with guest RAM and one vCPU, whose state is the engine's
//! [`CpuState`](krr_engine::state::CpuState).
//!
//! * [`Vm`]: guest RAM regions, the vCPU, its state in and out, running it to its next
//!   [`Exit`] and completing that exit's input, interrupt injection, kicks.
//! * [`regs`]: KVM's register structures to and from the engine's state, with one
//!   convention for unusable segments.
//! * [`stats`]: the vCPU's binary statistics (KVM_GET_STATS_FD), read by name.
//! * [`kick`]: stopping a running vCPU from another thread, and a time limit built on it.
//! * [`long_mode`]: the flat ring-0 long-mode environment guests start in.
//! * [`probe`]: programs run in scratch VMs to measure this host: the CPUID a guest
//!   observes, and the results the architecture leaves undefined.

mod exit;
pub mod kick;
pub mod long_mode;
pub mod probe;
pub mod regs;
pub mod stats;
mod vm;

pub use exit::Exit;
pub use vm::Vm;

/// Errors of the KVM layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed; `op` names it.
    #[error("{op}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("allocating guest memory")]
    Allocate(#[source] vm_memory::mmap::FromRangesError),
    #[error("guest memory at {gpa:#x}")]
    Memory {
        gpa: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("MSR list of {count} entries")]
    MsrList {
        count: usize,
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    #[error("CPUID table of {count} entries")]
    CpuidList {
        count: usize,
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    #[error("KVM_SET_MSRS: KVM accepted {accepted} of {count} MSRs, not MSR {refused:#x}")]
    MsrRefused {
        accepted: usize,
        count: usize,
        refused: u32,
    },
    /// [`Vm::complete_io_in`] or [`Vm::complete_mmio_read`] called when the vCPU did not
    /// stop at such an input.
    #[error("the vCPU is not stopped at {0}")]
    NoPendingInput(&'static str),
    /// A scratch VM's program stopped otherwise than by writing its port.
    #[error("{what}: unexpected exit {exit}")]
    UnexpectedExit { what: &'static str, exit: String },
    #[error("reading the KVM statistics file")]
    StatsRead(#[source] std::io::Error),
    #[error("the KVM statistics file's header is malformed ({0})")]
    StatsHeader(&'static str),
    #[error("{what} needs {len} bytes, more than its scratch VM holds")]
    ProbeTooLarge { what: &'static str, len: usize },
    #[error("fitting the undefined-behaviour probe's results")]
    ProbeFit(#[source] krr_engine::cpu::undefined::probe::ProbeError),
}

impl Error {
    pub fn kvm(op: &'static str, source: kvm_ioctls::Error) -> Self {
        Error::Kvm { op, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether KVM can be used here: `/dev/kvm` opens for reading and writing.
pub fn available() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}
