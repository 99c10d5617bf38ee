//! Programs run in scratch VMs (the [`long_mode`] environment, code at
//! [`FLAT_CODE_GPA`]) to measure what this host gives a guest where the documented
//! interfaces do not say: the CPUID values a guest observes, and the results the
//! architecture leaves undefined. Both depend on the host CPU the vCPU runs on: callers
//! pin the thread first where that matters.

use crate::long_mode::{self, FLAT_CODE_GPA};
use crate::{Error, Result, Vm};
use krr_engine::cpu::undefined::probe::{ProbeLayout, ProbeProgram};
use krr_engine::state::{CpuidEntry, MemoryRegion, Quirks, RegionKind};

/// The port the probes write when done.
const DONE_PORT: u16 = 0x80;

/// The CPUID probe's scratch VM: code at [`FLAT_CODE_GPA`], results above.
const CPUID_RAM: u64 = 4 << 20;
const CPUID_RESULTS_GPA: u64 = 0x20_0000;

/// The CPUID probe: for each query, `cpuid` and store EAX, EBX, ECX, EDX at
/// CPUID_RESULTS_GPA + 16 i.
fn cpuid_code(queries: &[CpuidEntry]) -> Vec<u8> {
    let mut c = Vec::with_capacity(queries.len() * 26 + 8);
    c.push(0xbf); // mov edi, CPUID_RESULTS_GPA
    c.extend_from_slice(&(CPUID_RESULTS_GPA as u32).to_le_bytes());
    for q in queries {
        c.push(0xb8); // mov eax, function
        c.extend_from_slice(&q.function.to_le_bytes());
        c.push(0xb9); // mov ecx, index
        c.extend_from_slice(&q.index.to_le_bytes());
        c.extend_from_slice(&[0x0f, 0xa2]); // cpuid
        c.extend_from_slice(&[0x89, 0x07]); // mov [rdi], eax
        c.extend_from_slice(&[0x89, 0x5f, 0x04]); // mov [rdi+4], ebx
        c.extend_from_slice(&[0x89, 0x4f, 0x08]); // mov [rdi+8], ecx
        c.extend_from_slice(&[0x89, 0x57, 0x0c]); // mov [rdi+12], edx
        c.extend_from_slice(&[0x48, 0x83, 0xc7, 0x10]); // add rdi, 16
    }
    c.extend_from_slice(&[0xe6, DONE_PORT as u8]); // out DONE_PORT, al
    c
}

/// What a guest observes executing `cpuid` for the function and index of each entry of
/// `queries` (typically the table a VM was given, [`Vm::cpuid`]), run in a scratch VM on
/// the calling thread's CPU: the entries with their registers replaced.
///
/// KVM is given its supported table, but on hosts whose KVM emulates ring-0 code the
/// guest does not observe that table as given (leaf 1 ECX differs, for one), and leaf 1
/// EBX[31:24] reports the APIC ID of the host CPU the vCPU happens to run on.
pub fn observed_cpuid(queries: &[CpuidEntry]) -> Result<Vec<CpuidEntry>> {
    observe_cpuid(queries, None)
}

/// What a guest whose vCPU is given `table` (KVM_SET_CPUID2) observes for every leaf of
/// it, run in a scratch VM given that same table on the calling thread's CPU. Where the
/// table is KVM's supported one this is [`observed_cpuid`] of it; where features were
/// taken out of it, this says which of them the guest still sees.
pub fn observed_cpuid_given(table: &[CpuidEntry]) -> Result<Vec<CpuidEntry>> {
    observe_cpuid(table, Some(table))
}

fn observe_cpuid(queries: &[CpuidEntry], given: Option<&[CpuidEntry]>) -> Result<Vec<CpuidEntry>> {
    let code = cpuid_code(queries);
    let results_len = 16 * queries.len();
    if FLAT_CODE_GPA + code.len() as u64 > CPUID_RESULTS_GPA
        || CPUID_RESULTS_GPA + results_len as u64 > CPUID_RAM
    {
        return Err(Error::ProbeTooLarge {
            what: "the CPUID probe",
            len: code.len() + results_len,
        });
    }
    let ram = [MemoryRegion {
        gpa: 0,
        size: CPUID_RAM,
        kind: RegionKind::Ram,
    }];
    let mut vm = match given {
        None => Vm::new(&ram)?,
        Some(table) => Vm::with_cpuid(&ram, table)?,
    };
    long_mode::load_flat_code(&mut vm, &code)?;
    vm.run_to_port(DONE_PORT, "CPUID probe")?;
    let mut results = vec![0u8; results_len];
    vm.read(CPUID_RESULTS_GPA, &mut results)?;
    let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(queries
        .iter()
        .zip(results.chunks_exact(16))
        .map(|(q, r)| CpuidEntry {
            eax: word(r, 0),
            ebx: word(r, 4),
            ecx: word(r, 8),
            edx: word(r, 12),
            ..*q
        })
        .collect())
}

/// Where the undefined-behaviour probe keeps its results and stack in its scratch VM
/// (its code is at [`FLAT_CODE_GPA`], below).
const UNDEFINED_RESULTS_GPA: u64 = 0x40_0000;
const UNDEFINED_STACK_TOP: u64 = 0x3f_0000;
const UNDEFINED_RAM: u64 = 8 << 20;

fn undefined_layout() -> ProbeLayout {
    ProbeLayout {
        results: UNDEFINED_RESULTS_GPA,
        stack_top: UNDEFINED_STACK_TOP,
        done_port: DONE_PORT as u8,
    }
}

/// How this host executes guest code where the architecture leaves results undefined,
/// and whether `tzcnt`/`lzcnt` run as bit scans: the engine's probe program
/// ([`krr_engine::cpu::undefined::probe`]) run in a scratch VM, and the replay CPU's
/// rules fitted to what it did, with `cpuid` the table the guest observes (it decides
/// whether `tzcnt`/`lzcnt` can count). What the rules cannot reproduce is listed in
/// [`krr_engine::cpu::undefined::UndefinedBehaviour::unmodelled`].
pub fn undefined_results(cpuid: &[CpuidEntry]) -> Result<Quirks> {
    let probe = ProbeProgram::new();
    let code = probe.assemble(&undefined_layout());
    if FLAT_CODE_GPA + code.len() as u64 > UNDEFINED_STACK_TOP - 0x1000 {
        return Err(Error::ProbeTooLarge {
            what: "the undefined-behaviour probe",
            len: code.len(),
        });
    }
    let mut vm = Vm::with_ram(UNDEFINED_RAM)?;
    long_mode::load_flat_code(&mut vm, &code)?;
    vm.run_to_port(DONE_PORT, "undefined-behaviour probe")?;
    let mut results = vec![0u8; probe.results_len()];
    vm.read(UNDEFINED_RESULTS_GPA, &mut results)?;
    probe.fit(&results, cpuid).map_err(Error::ProbeFit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undefined_behaviour_probe_fits_in_its_scratch_vm() {
        let probe = ProbeProgram::new();
        let code = probe.assemble(&undefined_layout());
        assert!(FLAT_CODE_GPA + (code.len() as u64) < UNDEFINED_STACK_TOP - 0x1000);
        assert!(UNDEFINED_RESULTS_GPA + (probe.results_len() as u64) < UNDEFINED_RAM);
    }

    #[test]
    fn the_cpuid_probe_holds_a_full_kvm_table() {
        let table = vec![
            CpuidEntry {
                function: 0,
                index: 0,
                flags: 0,
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            };
            kvm_bindings::KVM_MAX_CPUID_ENTRIES
        ];
        let code = cpuid_code(&table);
        assert!(FLAT_CODE_GPA + (code.len() as u64) <= CPUID_RESULTS_GPA);
        assert!(CPUID_RESULTS_GPA + 16 * table.len() as u64 <= CPUID_RAM);
    }
}
