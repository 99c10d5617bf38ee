//! The CPUID values the guest observes, which replay answers `cpuid` with.
//!
//! KVM is given its supported table (KVM_SET_CPUID2), but the guest does not always
//! observe that table as given, and what it observes depends on the host CPU the vCPU
//! runs on ([`krr_kvm::probe::observed_cpuid`]). So the recorder probes what a guest
//! sees, in a scratch VM on the CPU it pins the vCPU thread to for the whole recording,
//! and records that.

use crate::RecorderError;
use krr_engine::state::CpuidEntry;

/// Why the thread could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("finding the CPU this thread runs on (sched_getcpu)")]
    CurrentCpu(#[source] std::io::Error),
    #[error("pinning the vCPU thread to CPU {cpu}")]
    Affinity {
        cpu: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Pins the calling thread to the CPU it runs on now and returns that CPU.
pub fn pin_current_thread() -> Result<usize, PinError> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(PinError::CurrentCpu(std::io::Error::last_os_error()));
    }
    pin_thread(cpu as usize)?;
    Ok(cpu as usize)
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<(), PinError> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity
    // read and write only that set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(PinError::Affinity {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How long the calling thread has been ready to run but waited for a CPU, in total
/// (`/proc/thread-self/schedstat`), where the kernel reports it. A thread pinned to a
/// CPU that other work keeps busy waits there instead of moving to an idle one.
pub fn thread_run_delay() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

/// What a guest observes for every leaf of `table` (the table the VM was given), run
/// in a scratch VM given the same table on the calling thread's CPU.
pub fn observe(table: &[CpuidEntry]) -> Result<Vec<CpuidEntry>, RecorderError> {
    krr_kvm::probe::observed_cpuid_given(table).map_err(RecorderError::ObserveCpuid)
}
