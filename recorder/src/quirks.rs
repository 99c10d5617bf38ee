//! How this host executes guest kernel code where CPUID does not say: whether
//! `tzcnt`/`lzcnt` run as bit scans, and every flag and result the architecture leaves
//! undefined (DESIGN.md section 5). Measured by running the engine's probe program in a
//! scratch VM on the CPU the recording runs on ([`krr_kvm::probe::undefined_results`]),
//! and stored in the header so that replay reproduces this host anywhere. Likewise what
//! `rdmsr` and `wrmsr` do with the MSRs the replay CPU does not model
//! ([`measure_msrs`]): KVM answers them without a VM exit, so no event can hold them.

use crate::RecorderError;
use krr_engine::cpu::{MEASURED_MSRS, MsrTable};
use krr_engine::state::{CpuidEntry, Quirks};

/// Runs the probe in a scratch VM and fits the replay CPU's rules to what it did,
/// with `cpuid` the table the guest observes (it decides whether `tzcnt`/`lzcnt` can
/// count in replay). What the rules cannot reproduce is listed in
/// [`krr_engine::cpu::undefined::UndefinedBehaviour::unmodelled`] and logged.
pub fn measure(cpuid: &[CpuidEntry]) -> Result<Quirks, RecorderError> {
    let quirks = krr_kvm::probe::undefined_results(cpuid).map_err(RecorderError::MeasureQuirks)?;
    for u in &quirks.undefined.unmodelled {
        tracing::warn!(
            family = u.family.name(),
            size = u.size,
            "this host's undefined results are not modelled (replay may diverge where a \
             recording depends on them): {}",
            u.detail
        );
    }
    Ok(quirks)
}

/// What this host's `rdmsr` and `wrmsr` do with each MSR of
/// [`krr_engine::cpu::MEASURED_MSRS`] for a vCPU given the CPUID table `given` (the
/// recording VM's), measured in a scratch VM on the calling thread's CPU
/// ([`krr_kvm::probe::msr_behaviour`]) and logged at debug level.
pub fn measure_msrs(given: &[CpuidEntry]) -> Result<MsrTable, RecorderError> {
    let table =
        krr_kvm::probe::msr_behaviour(MEASURED_MSRS, given).map_err(RecorderError::MeasureMsrs)?;
    for line in table.table() {
        tracing::debug!("host MSR {}", line.trim_start());
    }
    Ok(table)
}
