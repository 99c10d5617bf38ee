//! The CPUID values the guest observes, which replay answers `cpuid` with.
//!
//! KVM is given its supported table (KVM_SET_CPUID2), but on hosts whose KVM emulates
//! ring-0 code the guest does not observe that table as given (leaf 1 ECX differs, for
//! one), and leaf 1 EBX[31:24] reports the APIC ID of the host CPU the vCPU happens to
//! run on. So the recorder probes what a guest sees, in a scratch VM on the CPU it pins
//! the vCPU thread to for the whole recording, and records that.

use crate::RecorderError;
use crate::loader::load_flat_code;
use crate::vm::Vm;
use krr_engine::state::CpuidEntry;

/// Guest-physical address of the probe's results.
const RESULTS_GPA: u64 = 0x20_0000;
/// The port the probe writes when done.
const DONE_PORT: u16 = 0x80;

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

/// The probe: for each query, `cpuid` and store EAX, EBX, ECX, EDX at RESULTS_GPA + 16 i.
fn probe_code(queries: &[(u32, u32)]) -> Vec<u8> {
    let mut c = Vec::with_capacity(queries.len() * 26 + 8);
    c.push(0xbf); // mov edi, RESULTS_GPA
    c.extend_from_slice(&(RESULTS_GPA as u32).to_le_bytes());
    for &(function, index) in queries {
        c.push(0xb8); // mov eax, function
        c.extend_from_slice(&function.to_le_bytes());
        c.push(0xb9); // mov ecx, index
        c.extend_from_slice(&index.to_le_bytes());
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

/// What a guest observes for every leaf of `table` (the table the VM was given), run
/// in a scratch VM on the calling thread's CPU.
pub fn observe(table: &[CpuidEntry]) -> Result<Vec<CpuidEntry>, RecorderError> {
    let queries: Vec<(u32, u32)> = table.iter().map(|e| (e.function, e.index)).collect();
    let mut vm = Vm::new(4 << 20)?;
    load_flat_code(&mut vm, &probe_code(&queries))?;
    vm.run_until_out(DONE_PORT, "CPUID probe")?;
    let mut results = vec![0u8; 16 * queries.len()];
    vm.read(RESULTS_GPA, &mut results)?;
    let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(table
        .iter()
        .zip(results.chunks_exact(16))
        .map(|(e, r)| CpuidEntry {
            eax: word(r, 0),
            ebx: word(r, 4),
            ecx: word(r, 8),
            edx: word(r, 12),
            ..*e
        })
        .collect())
}
