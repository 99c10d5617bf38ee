//! What the recording host's `rdmsr` and `wrmsr` do with the MSRs the replay CPU does
//! not model.
//!
//! A ring-0 `rdmsr` or `wrmsr` causes no VM exit on the recording hosts (KVM answers it
//! inside the kernel), so a recording cannot hold what happened. A kernel reads MSRs
//! whose values only the host knows (Linux 6.1 at boot: IA32_MISC_ENABLE 0x1a0,
//! IA32_BIOS_SIGN_ID 0x8b, IA32_ARCH_CAPABILITIES 0x10a, MSR_PLATFORM_INFO 0xce, MTRRcap
//! 0xfe, ...), some that fault (0x3a, 0x64e), and writes some (0x8b, which KVM accepts
//! and ignores: a #GP there sends Linux through its MSR-fixup warning, 68,559
//! instructions of printk, and the replay off the recording). The recorder is to
//! measure them in a scratch VM, as it measures CPUID, and store the table in the
//! recording; the replay CPU then answers from it ([`crate::cpu::Cpu::set_msr_table`]).

use serde::{Deserialize, Serialize};

/// What `rdmsr` of one MSR did on the recording host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsrRead {
    /// It returned this value.
    Value(u64),
    /// It raised #GP.
    Faults,
}

/// What `wrmsr` of one MSR did on the recording host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsrWrite {
    /// It raised #GP.
    Faults,
    /// It was accepted and changed nothing a later `rdmsr` sees.
    Ignored,
    /// It was accepted, and a later `rdmsr` returns the value written.
    Kept,
}

/// What the recording host does with one MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrBehaviour {
    pub read: MsrRead,
    pub write: MsrWrite,
}

/// The measured MSRs, by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrTable {
    /// Sorted by MSR number, one entry per number.
    entries: Vec<(u32, MsrBehaviour)>,
}

impl MsrTable {
    /// A table of the given measurements (a later entry for the same MSR wins).
    pub fn new(entries: impl IntoIterator<Item = (u32, MsrBehaviour)>) -> MsrTable {
        let mut entries: Vec<(u32, MsrBehaviour)> = entries.into_iter().collect();
        // Stable: equal numbers keep their order, and the last one is kept.
        entries.sort_by_key(|&(index, _)| index);
        entries.reverse();
        entries.dedup_by_key(|&mut (index, _)| index);
        entries.reverse();
        MsrTable { entries }
    }

    /// What the host does with MSR `index`, if it was measured.
    pub fn get(&self, index: u32) -> Option<MsrBehaviour> {
        self.entries
            .binary_search_by_key(&index, |&(i, _)| i)
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn entries(&self) -> &[(u32, MsrBehaviour)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaves(read: MsrRead, write: MsrWrite) -> MsrBehaviour {
        MsrBehaviour { read, write }
    }

    #[test]
    fn lookups_find_the_last_measurement_of_each_msr() {
        let t = MsrTable::new([
            (0x1a0, behaves(MsrRead::Value(1), MsrWrite::Kept)),
            (0x3a, behaves(MsrRead::Faults, MsrWrite::Faults)),
            (0x8b, behaves(MsrRead::Value(0), MsrWrite::Ignored)),
            (0x1a0, behaves(MsrRead::Value(0x850089), MsrWrite::Kept)),
        ]);
        assert_eq!(t.get(0x1a0).map(|b| b.read), Some(MsrRead::Value(0x850089)));
        assert_eq!(t.get(0x3a).map(|b| b.read), Some(MsrRead::Faults));
        assert_eq!(t.get(0x8b).map(|b| b.write), Some(MsrWrite::Ignored));
        assert_eq!(t.get(0x8c), None);
        assert_eq!(t.entries().len(), 3);
        assert_eq!(MsrTable::default().get(0x1a0), None);
    }
}
