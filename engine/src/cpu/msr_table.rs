//! What the recording host's `rdmsr` and `wrmsr` do with the MSRs the replay CPU does
//! not model.
//!
//! A ring-0 `rdmsr` or `wrmsr` causes no VM exit on the recording hosts (KVM answers it
//! inside the kernel), so a recording cannot hold what happened. A kernel reads MSRs
//! whose values only the host knows (Linux 6.1 at boot: IA32_MISC_ENABLE 0x1a0,
//! IA32_BIOS_SIGN_ID 0x8b, IA32_ARCH_CAPABILITIES 0x10a, MSR_PLATFORM_INFO 0xce, MTRRcap
//! 0xfe, ...), some that fault (0x3a, 0x64e), and writes some (0x8b, which KVM accepts
//! and ignores: a #GP there sends Linux through its MSR-fixup warning, 68,559
//! instructions of printk, and the replay off the recording). The recorder measures the
//! MSRs of [`MEASURED_MSRS`] in a scratch VM, as it measures CPUID
//! (`krr_kvm::probe::msr_behaviour`), and stores the table in the recording's header
//! ([`crate::state::MachineConfig::msrs`], format 5); replay gives it to the CPU, which
//! answers from it ([`crate::cpu::Cpu::set_msr_table`]).

use serde::{Deserialize, Deserializer, Serialize};

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
    /// Not measured: writing it in the probe could harm the probe, or the guests of
    /// [`MEASURED_MSRS`] are not known to write it. Replay stops at such a write.
    NotMeasured,
}

/// What the recording host does with one MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrBehaviour {
    pub read: MsrRead,
    pub write: MsrWrite,
}

/// One MSR the recorder measures: one the replay CPU does not model, which a guest
/// kernel is known to read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredMsr {
    pub index: u32,
    pub name: &'static str,
    /// The value the probe writes to learn what `wrmsr` does: one the MSR does not hold
    /// in a new VM, so that a write kept and a write ignored read back differently;
    /// `None` where writing is not probed (it could harm the probe, or no known guest
    /// writes the MSR).
    pub probe_write: Option<u64>,
}

const fn read_only(index: u32, name: &'static str) -> MeasuredMsr {
    MeasuredMsr {
        index,
        name,
        probe_write: None,
    }
}

/// The MSRs the recorder measures (the one list): those Linux 6.1 and the demo kernel
/// read or write that the replay CPU does not model. Writes are probed only where the
/// guest is known to write (Linux: 0 to IA32_BIOS_SIGN_ID before reading the microcode
/// revision, 0 to MISC_FEATURES_ENABLES), with a value that tells kept from ignored:
/// the probe restores the first value read at once.
pub const MEASURED_MSRS: &[MeasuredMsr] = &[
    read_only(0x17, "IA32_PLATFORM_ID"),
    read_only(0x34, "MSR_SMI_COUNT"),
    read_only(0x3a, "IA32_FEATURE_CONTROL"),
    read_only(0x3b, "IA32_TSC_ADJUST"),
    read_only(0x48, "IA32_SPEC_CTRL"),
    MeasuredMsr {
        index: 0x8b,
        name: "IA32_BIOS_SIGN_ID",
        probe_write: Some(0x0000_00ab_0000_0000),
    },
    read_only(0xce, "MSR_PLATFORM_INFO"),
    read_only(0xfe, "IA32_MTRRCAP"),
    read_only(0x10a, "IA32_ARCH_CAPABILITIES"),
    read_only(0x122, "IA32_TSX_CTRL"),
    MeasuredMsr {
        index: 0x140,
        name: "MSR_MISC_FEATURES_ENABLES",
        // CPUID faulting on (the probe runs no `cpuid` before restoring it).
        probe_write: Some(1),
    },
    read_only(0x1a0, "IA32_MISC_ENABLE"),
    read_only(0x200, "IA32_MTRR_PHYSBASE0"),
    read_only(0x201, "IA32_MTRR_PHYSMASK0"),
    read_only(0x202, "IA32_MTRR_PHYSBASE1"),
    read_only(0x203, "IA32_MTRR_PHYSMASK1"),
    read_only(0x204, "IA32_MTRR_PHYSBASE2"),
    read_only(0x205, "IA32_MTRR_PHYSMASK2"),
    read_only(0x206, "IA32_MTRR_PHYSBASE3"),
    read_only(0x207, "IA32_MTRR_PHYSMASK3"),
    read_only(0x208, "IA32_MTRR_PHYSBASE4"),
    read_only(0x209, "IA32_MTRR_PHYSMASK4"),
    read_only(0x20a, "IA32_MTRR_PHYSBASE5"),
    read_only(0x20b, "IA32_MTRR_PHYSMASK5"),
    read_only(0x20c, "IA32_MTRR_PHYSBASE6"),
    read_only(0x20d, "IA32_MTRR_PHYSMASK6"),
    read_only(0x20e, "IA32_MTRR_PHYSBASE7"),
    read_only(0x20f, "IA32_MTRR_PHYSMASK7"),
    read_only(0x250, "IA32_MTRR_FIX64K_00000"),
    read_only(0x258, "IA32_MTRR_FIX16K_80000"),
    read_only(0x259, "IA32_MTRR_FIX16K_A0000"),
    read_only(0x268, "IA32_MTRR_FIX4K_C0000"),
    read_only(0x269, "IA32_MTRR_FIX4K_C8000"),
    read_only(0x26a, "IA32_MTRR_FIX4K_D0000"),
    read_only(0x26b, "IA32_MTRR_FIX4K_D8000"),
    read_only(0x26c, "IA32_MTRR_FIX4K_E0000"),
    read_only(0x26d, "IA32_MTRR_FIX4K_E8000"),
    read_only(0x26e, "IA32_MTRR_FIX4K_F0000"),
    read_only(0x26f, "IA32_MTRR_FIX4K_F8000"),
    read_only(0x2ff, "IA32_MTRR_DEF_TYPE"),
    read_only(0x64e, "MSR_PPERF"),
];

/// The name of MSR `index` in [`MEASURED_MSRS`], if it is there.
pub fn measured_msr_name(index: u32) -> Option<&'static str> {
    MEASURED_MSRS
        .iter()
        .find(|m| m.index == index)
        .map(|m| m.name)
}

/// The measured MSRs, by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MsrTable {
    /// Sorted by MSR number, one entry per number.
    entries: Vec<(u32, MsrBehaviour)>,
}

/// Read from a recording: at most [`crate::trace::limits::MAX_MSR_TABLE`] entries, put
/// in order whatever order the file has them in (lookups search them).
impl<'de> Deserialize<'de> for MsrTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MsrTable, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "MsrTable")]
        struct Stored {
            #[serde(deserialize_with = "crate::trace::limits::msr_table")]
            entries: Vec<(u32, MsrBehaviour)>,
        }
        Ok(MsrTable::new(Stored::deserialize(d)?.entries))
    }
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

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One line per MSR: number, name, what `rdmsr` and `wrmsr` did (`krr-tui info`).
    pub fn table(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|&(index, b)| {
                let read = match b.read {
                    MsrRead::Value(v) => format!("{v:#018x}"),
                    MsrRead::Faults => "#GP".to_string(),
                };
                let write = match b.write {
                    MsrWrite::Faults => "#GP",
                    MsrWrite::Ignored => "ignored",
                    MsrWrite::Kept => "kept",
                    MsrWrite::NotMeasured => "not measured",
                };
                format!(
                    "  {index:#010x} {:<25} rdmsr {read:<18}  wrmsr {write}",
                    measured_msr_name(index).unwrap_or("")
                )
            })
            .collect()
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
