//! Programs run in scratch VMs (the [`long_mode`] environment, code at
//! [`FLAT_CODE_GPA`]) to measure what this host gives a guest where the documented
//! interfaces do not say: the CPUID values a guest observes, the results the
//! architecture leaves undefined, and what `rdmsr`/`wrmsr` do with the MSRs the replay
//! CPU does not model. They depend on the host CPU the vCPU runs on: callers pin the
//! thread first where that matters.

use crate::long_mode::{self, FLAT_CODE_GPA};
use crate::{Error, Result, Vm};
use krr_engine::cpu::undefined::probe::{ProbeLayout, ProbeProgram};
use krr_engine::cpu::{MeasuredMsr, MsrBehaviour, MsrRead, MsrTable, MsrWrite};
use krr_engine::state::{CpuidEntry, DescriptorTable, MemoryRegion, Quirks, RegionKind};

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

/// The MSR probe's scratch VM: code at [`FLAT_CODE_GPA`], its IDT and results above.
const MSR_RAM: u64 = 4 << 20;
const MSR_IDT_GPA: u64 = 0x9_0000;
/// IDT entries 0..32 (the exceptions); only #GP's is present.
const MSR_IDT_ENTRIES: u64 = 32;
const MSR_RESULTS_GPA: u64 = 0x20_0000;
/// Bytes of results per MSR: the value read (8), whether the read faulted (4); where
/// the write is probed, whether the write faulted (4), the value read back (8), whether
/// that read faulted (4), whether restoring the first value faulted (4).
const MSR_RESULT_LEN: usize = 32;
// The IDT lies between the entry stack and the code.
const _: () = assert!(
    MSR_IDT_GPA >= long_mode::STACK_TOP
        && MSR_IDT_GPA >= long_mode::END
        && MSR_IDT_GPA + 16 * MSR_IDT_ENTRIES <= FLAT_CODE_GPA
);
/// Where the vCPU starts: a jump over the #GP handler, which follows it.
const MSR_HANDLER_GPA: u64 = FLAT_CODE_GPA + 5;

/// The MSR probe: a #GP handler that skips the 2-byte `rdmsr`/`wrmsr` that faulted and
/// sets R8D to 1; then for each MSR, `rdmsr` and, where its write is probed, `wrmsr` of
/// the probe value, `rdmsr` back, and `wrmsr` of the value first read. Results at
/// MSR_RESULTS_GPA + MSR_RESULT_LEN i (see [`MSR_RESULT_LEN`]).
fn msr_code(msrs: &[MeasuredMsr]) -> Vec<u8> {
    const CLEAR_FAULT: [u8; 3] = [0x45, 0x31, 0xc0]; // xor r8d, r8d
    const RDMSR: [u8; 2] = [0x0f, 0x32];
    const WRMSR: [u8; 2] = [0x0f, 0x30];
    let store_fault = |c: &mut Vec<u8>, disp: u8| c.extend_from_slice(&[0x44, 0x89, 0x47, disp]); // mov [rdi+disp], r8d
    let handler: [u8; 17] = [
        0x48, 0x83, 0xc4, 0x08, // add rsp, 8 (the error code)
        0x48, 0x83, 0x04, 0x24, 0x02, // add qword [rsp], 2 (past the instruction)
        0x41, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov r8d, 1
        0x48, 0xcf, // iretq
    ];
    let mut c = Vec::with_capacity(msrs.len() * 80 + 32);
    c.push(0xe9); // jmp over the handler
    c.extend_from_slice(&(handler.len() as u32).to_le_bytes());
    c.extend_from_slice(&handler);
    c.push(0xbf); // mov edi, MSR_RESULTS_GPA
    c.extend_from_slice(&(MSR_RESULTS_GPA as u32).to_le_bytes());
    for m in msrs {
        c.push(0xb9); // mov ecx, index
        c.extend_from_slice(&m.index.to_le_bytes());
        c.extend_from_slice(&CLEAR_FAULT);
        c.extend_from_slice(&RDMSR);
        c.extend_from_slice(&[0x89, 0x07]); // mov [rdi], eax
        c.extend_from_slice(&[0x89, 0x57, 0x04]); // mov [rdi+4], edx
        store_fault(&mut c, 8);
        if let Some(value) = m.probe_write {
            let mut w = Vec::with_capacity(64);
            w.extend_from_slice(&[0x41, 0x89, 0xc1]); // mov r9d, eax
            w.extend_from_slice(&[0x41, 0x89, 0xd2]); // mov r10d, edx
            w.push(0xb8); // mov eax, low half
            w.extend_from_slice(&(value as u32).to_le_bytes());
            w.push(0xba); // mov edx, high half
            w.extend_from_slice(&((value >> 32) as u32).to_le_bytes());
            w.extend_from_slice(&CLEAR_FAULT);
            w.extend_from_slice(&WRMSR);
            store_fault(&mut w, 12);
            w.extend_from_slice(&CLEAR_FAULT);
            w.extend_from_slice(&RDMSR);
            w.extend_from_slice(&[0x89, 0x47, 0x10]); // mov [rdi+16], eax
            w.extend_from_slice(&[0x89, 0x57, 0x14]); // mov [rdi+20], edx
            store_fault(&mut w, 24);
            w.extend_from_slice(&[0x44, 0x89, 0xc8]); // mov eax, r9d
            w.extend_from_slice(&[0x44, 0x89, 0xd2]); // mov edx, r10d
            w.extend_from_slice(&CLEAR_FAULT);
            w.extend_from_slice(&WRMSR);
            store_fault(&mut w, 28);
            // Only an MSR that reads has a value to restore.
            c.extend_from_slice(&[0x45, 0x85, 0xc0]); // test r8d, r8d
            c.extend_from_slice(&[0x0f, 0x85]); // jnz over the write
            c.extend_from_slice(&(w.len() as u32).to_le_bytes());
            c.extend_from_slice(&w);
        }
        c.extend_from_slice(&[0x48, 0x83, 0xc7, MSR_RESULT_LEN as u8]); // add rdi, 32
    }
    c.extend_from_slice(&[0xe6, DONE_PORT as u8]); // out DONE_PORT, al
    c
}

/// The IDT's entry for #GP: a present 64-bit interrupt gate to the handler.
fn gp_gate() -> [u8; 16] {
    let offset = MSR_HANDLER_GPA;
    let low = (offset & 0xffff)
        | (0x08 << 16) // the code segment
        | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
        | (((offset >> 16) & 0xffff) << 48);
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&low.to_le_bytes());
    g[8..12].copy_from_slice(&((offset >> 32) as u32).to_le_bytes());
    g
}

/// What this host's `rdmsr` and `wrmsr` do with each of `msrs` in a new VM whose vCPU
/// is given the CPUID table `given` (the recording VM's: what a guest may read depends
/// on it), run in a scratch VM on the calling thread's CPU: the value read or #GP; where the MSR's write is probed
/// ([`MeasuredMsr::probe_write`]), whether writing the probe value faults, is kept (read
/// back) or ignored (the first value read back). An MSR whose read faults, or whose
/// write leaves a third value, has its write [`MsrWrite::NotMeasured`]: replay then
/// stops at a write of it rather than guess.
pub fn msr_behaviour(msrs: &[MeasuredMsr], given: &[CpuidEntry]) -> Result<MsrTable> {
    let code = msr_code(msrs);
    let results_len = MSR_RESULT_LEN * msrs.len();
    if FLAT_CODE_GPA + code.len() as u64 > MSR_RESULTS_GPA
        || MSR_RESULTS_GPA + results_len as u64 > MSR_RAM
    {
        return Err(Error::ProbeTooLarge {
            what: "the MSR probe",
            len: code.len() + results_len,
        });
    }
    let ram = [MemoryRegion {
        gpa: 0,
        size: MSR_RAM,
        kind: RegionKind::Ram,
    }];
    let mut vm = Vm::with_cpuid(&ram, given)?;
    long_mode::build(&vm)?;
    vm.write(FLAT_CODE_GPA, &code)?;
    vm.write(MSR_IDT_GPA + 16 * 13, &gp_gate())?;
    let mut st = long_mode::entry_state(FLAT_CODE_GPA);
    st.idtr = DescriptorTable {
        base: MSR_IDT_GPA,
        limit: (16 * MSR_IDT_ENTRIES - 1) as u16,
    };
    vm.set_cpu_state(&st)?;
    vm.run_to_port(DONE_PORT, "MSR probe")?;
    let mut results = vec![0u8; results_len];
    vm.read(MSR_RESULTS_GPA, &mut results)?;
    Ok(MsrTable::new(
        msrs.iter()
            .zip(results.chunks_exact(MSR_RESULT_LEN))
            .map(|(m, r)| (m.index, behaviour(m, r))),
    ))
}

/// One MSR's behaviour from its [`MSR_RESULT_LEN`] bytes of probe results.
fn behaviour(m: &MeasuredMsr, r: &[u8]) -> MsrBehaviour {
    let word = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let quad = |i: usize| u64::from(word(i)) | u64::from(word(i + 4)) << 32;
    let read = if word(8) != 0 {
        MsrRead::Faults
    } else {
        MsrRead::Value(quad(0))
    };
    let write = match (m.probe_write, read) {
        (None, _) | (Some(_), MsrRead::Faults) => MsrWrite::NotMeasured,
        (Some(_), MsrRead::Value(_)) if word(12) != 0 => MsrWrite::Faults,
        (Some(_), MsrRead::Value(_)) if word(24) != 0 => MsrWrite::NotMeasured,
        (Some(written), MsrRead::Value(_)) if quad(16) == written => MsrWrite::Kept,
        (Some(_), MsrRead::Value(first)) if quad(16) == first => MsrWrite::Ignored,
        (Some(_), MsrRead::Value(_)) => MsrWrite::NotMeasured,
    };
    MsrBehaviour { read, write }
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
    fn the_msr_probe_fits_in_its_scratch_vm() {
        let code = msr_code(krr_engine::cpu::MEASURED_MSRS);
        assert!(FLAT_CODE_GPA + (code.len() as u64) <= MSR_RESULTS_GPA);
        let results = MSR_RESULT_LEN * krr_engine::cpu::MEASURED_MSRS.len();
        assert!(MSR_RESULTS_GPA + results as u64 <= MSR_RAM);
        // The jump at the start lands just past the handler, which starts where the
        // IDT's gate points.
        assert_eq!(code[0], 0xe9);
        let skip = u32::from_le_bytes(code[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            &code[5 + skip - 2..5 + skip],
            &[0x48, 0xcf],
            "iretq ends the handler"
        );
        assert_eq!(MSR_HANDLER_GPA, FLAT_CODE_GPA + 5);
    }

    /// The classification of the probe's raw results.
    #[test]
    fn msr_results_classify_reads_and_writes() {
        let probed = MeasuredMsr {
            index: 0x8b,
            name: "x",
            probe_write: Some(0),
        };
        let results = |first: u64, read_faults: u32, write_faults: u32, back: u64| {
            let mut r = [0u8; MSR_RESULT_LEN];
            r[..8].copy_from_slice(&first.to_le_bytes());
            r[8..12].copy_from_slice(&read_faults.to_le_bytes());
            r[12..16].copy_from_slice(&write_faults.to_le_bytes());
            r[16..24].copy_from_slice(&back.to_le_bytes());
            r
        };
        let b = |m: &MeasuredMsr, r: [u8; MSR_RESULT_LEN]| behaviour(m, &r);
        assert_eq!(
            b(&probed, results(1 << 32, 0, 0, 1 << 32)),
            MsrBehaviour {
                read: MsrRead::Value(1 << 32),
                write: MsrWrite::Ignored
            }
        );
        assert_eq!(b(&probed, results(5, 0, 0, 0)).write, MsrWrite::Kept);
        assert_eq!(b(&probed, results(5, 0, 1, 5)).write, MsrWrite::Faults);
        assert_eq!(b(&probed, results(5, 0, 0, 7)).write, MsrWrite::NotMeasured);
        assert_eq!(
            b(&probed, results(0, 1, 0, 0)),
            MsrBehaviour {
                read: MsrRead::Faults,
                write: MsrWrite::NotMeasured
            }
        );
        let read_only = MeasuredMsr {
            probe_write: None,
            ..probed
        };
        assert_eq!(
            b(&read_only, results(9, 0, 0, 0)).write,
            MsrWrite::NotMeasured
        );
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
