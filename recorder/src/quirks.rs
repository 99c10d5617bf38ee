//! How this host executes guest kernel code where it differs from a hardware CPU with
//! the same CPUID, measured in a scratch VM and recorded in the header so that replay
//! reproduces it (replay cannot infer it from the counter source: a recording made
//! without a counter on a host whose KVM emulates ring 0 has the same quirks).

use crate::RecorderError;
use crate::loader::load_flat_code;
use crate::vm::Vm;
use krr_engine::state::Quirks;

/// The port the probe writes when done.
const DONE_PORT: u16 = 0x80;
/// What the probe's destination registers hold before the bit scans.
const UNTOUCHED: u32 = 0x5a5a_5a5a;

/// `tzcnt eax, ecx` with ECX = 0 and `lzcnt edx, ebx` with EBX = 1: as `tzcnt`/`lzcnt`
/// they give 32 and 31; as `bsf`/`bsr` (the F3 prefix ignored) EAX keeps its value
/// (source zero) and EDX becomes 0.
const PROBE: [u8; 27] = [
    0xb8,
    0x5a,
    0x5a,
    0x5a,
    0x5a, // mov eax, UNTOUCHED
    0x31,
    0xc9, // xor ecx, ecx
    0xf3,
    0x0f,
    0xbc,
    0xc1, // tzcnt eax, ecx
    0xba,
    0x5a,
    0x5a,
    0x5a,
    0x5a, // mov edx, UNTOUCHED
    0xbb,
    0x01,
    0x00,
    0x00,
    0x00, // mov ebx, 1
    0xf3,
    0x0f,
    0xbd,
    0xd3, // lzcnt edx, ebx
    0xe6,
    DONE_PORT as u8, // out DONE_PORT, al
];

/// Runs the probe in a scratch VM and returns the quirks it shows.
pub fn measure() -> Result<Quirks, RecorderError> {
    let mut vm = Vm::new(2 << 20)?;
    load_flat_code(&mut vm, &PROBE)?;
    vm.run_until_out(DONE_PORT, "quirks probe")?;
    let regs = vm
        .vcpu
        .get_regs()
        .map_err(|e| RecorderError::kvm("KVM_GET_REGS", e))?;
    Ok(from_results(regs.rax as u32, regs.rdx as u32))
}

/// The quirks shown by the probe's results.
fn from_results(tzcnt_eax: u32, lzcnt_edx: u32) -> Quirks {
    let as_bsf = tzcnt_eax == UNTOUCHED;
    let as_bsr = lzcnt_edx == 0;
    if as_bsf != as_bsr {
        // Not a host the replay CPU models: follow tzcnt, say so.
        tracing::warn!(
            tzcnt_eax,
            lzcnt_edx,
            "tzcnt and lzcnt disagree on the F3 prefix"
        );
    }
    Quirks {
        bit_scan_ignores_rep: as_bsf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_quirks() {
        assert!(from_results(UNTOUCHED, 0).bit_scan_ignores_rep);
        assert!(!from_results(32, 31).bit_scan_ignores_rep);
    }

    #[test]
    fn the_probe_decodes_to_the_bit_scans_it_means() {
        let mut d = iced_x86::Decoder::with_ip(64, &PROBE, 0, iced_x86::DecoderOptions::NONE);
        let text: Vec<String> = d.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            [
                "mov eax,5A5A5A5Ah",
                "xor ecx,ecx",
                "tzcnt eax,ecx",
                "mov edx,5A5A5A5Ah",
                "mov ebx,1",
                "lzcnt edx,ebx",
                "out 80h,al",
            ]
        );
    }
}
