//! How this host executes guest kernel code where CPUID does not say: whether
//! `tzcnt`/`lzcnt` run as bit scans, and every flag and result the architecture leaves
//! undefined (DESIGN.md section 5). Measured by running the engine's probe program
//! ([`krr_engine::cpu::undefined::probe`]) in a scratch VM on the CPU the recording runs
//! on, and stored in the header so that replay reproduces this host anywhere.

use crate::RecorderError;
use crate::loader::{FLAT_CODE_GPA, load_flat_code};
use crate::vm::Vm;
use krr_engine::cpu::undefined::probe::{ProbeLayout, ProbeProgram};
use krr_engine::state::{CpuidEntry, Quirks};

/// The port the probe writes when done.
const DONE_PORT: u8 = 0x80;
/// Where the probe keeps its results and stack in the scratch VM (its code is at
/// [`FLAT_CODE_GPA`], below).
const RESULTS_GPA: u64 = 0x40_0000;
const STACK_TOP: u64 = 0x3f_0000;
/// The scratch VM's memory.
const PROBE_RAM: u64 = 8 << 20;

/// Runs the probe in a scratch VM and fits the replay CPU's rules to what it did,
/// with `cpuid` the table the guest observes (it decides whether `tzcnt`/`lzcnt` can
/// count in replay). What the rules cannot reproduce is listed in
/// [`krr_engine::cpu::undefined::UndefinedBehaviour::unmodelled`] and logged.
pub fn measure(cpuid: &[CpuidEntry]) -> Result<Quirks, RecorderError> {
    let probe = ProbeProgram::new();
    let layout = ProbeLayout {
        results: RESULTS_GPA,
        stack_top: STACK_TOP,
        done_port: DONE_PORT,
    };
    let code = probe.assemble(&layout);
    if FLAT_CODE_GPA + code.len() as u64 > STACK_TOP - 0x1000 {
        return Err(RecorderError::Config(format!(
            "the undefined-behaviour probe is {} bytes, more than its scratch VM holds",
            code.len()
        )));
    }
    let mut vm = Vm::new(PROBE_RAM)?;
    load_flat_code(&mut vm, &code)?;
    vm.run_until_out(DONE_PORT as u16, "undefined-behaviour probe")?;
    let mut results = vec![0u8; probe.results_len()];
    vm.read(RESULTS_GPA, &mut results)?;
    let quirks = probe
        .fit(&results, cpuid)
        .map_err(|e| RecorderError::Guest(format!("undefined-behaviour probe: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_fits_in_its_scratch_vm() {
        let probe = ProbeProgram::new();
        let code = probe.assemble(&ProbeLayout {
            results: RESULTS_GPA,
            stack_top: STACK_TOP,
            done_port: DONE_PORT,
        });
        assert!(FLAT_CODE_GPA + (code.len() as u64) < STACK_TOP - 0x1000);
        assert!(RESULTS_GPA + (probe.results_len() as u64) < PROBE_RAM);
    }
}
