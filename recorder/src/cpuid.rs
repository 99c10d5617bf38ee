//! The CPUID values the guest observes, which replay answers `cpuid` with.
//!
//! KVM is given its supported table (KVM_SET_CPUID2), but the guest does not always
//! observe that table as given, and what it observes depends on the host CPU the vCPU
//! runs on ([`krr_kvm::probe::observed_cpuid`]). So the recorder probes what a guest
//! sees, in a scratch VM on the CPU it pins the vCPU thread to for the whole recording,
//! and records that.

use crate::RecorderError;
use krr_engine::state::CpuidEntry;

/// Pins the calling thread to the CPU it runs on now and returns that CPU.
pub fn pin_current_thread() -> Result<usize, RecorderError> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(RecorderError::Config(format!(
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        )));
    }
    pin_thread(cpu as usize)?;
    Ok(cpu as usize)
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<(), RecorderError> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity
    // read and write only that set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(RecorderError::Config(format!(
            "pinning the vCPU thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// What a guest observes for every leaf of `table` (the table the VM was given), run
/// in a scratch VM on the calling thread's CPU.
pub fn observe(table: &[CpuidEntry]) -> Result<Vec<CpuidEntry>, RecorderError> {
    Ok(krr_kvm::probe::observed_cpuid(table)?)
}
