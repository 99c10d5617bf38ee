//! Format 4, which this build still reads: its header and machine configuration as
//! format 4 wrote them (format 3's machine configuration too), and their conversion.
//! Format 5 added the recording host's MSR table to the machine configuration
//! ([`crate::state::MachineConfig::msrs`]); older recordings replay with an empty
//! table, so an MSR the replay CPU does not model stops replay with a divergence that
//! names it. The events are those of format 5.

use serde::Deserialize;

use crate::state::{self, CounterSourceKind, CpuidEntry, KernelIdentity, MemoryRegion, Symbol};

/// The format version this module reads.
pub const VERSION: u32 = 4;

#[derive(Deserialize)]
pub struct Header {
    format_version: u32,
    machine: MachineConfig,
    #[serde(deserialize_with = "super::limits::cpuid")]
    cpuid: Vec<CpuidEntry>,
    kernel: KernelIdentity,
    #[serde(deserialize_with = "super::limits::symbols")]
    symbols: Vec<Symbol>,
    kernel_image: Option<Vec<u8>>,
    command_line: String,
    created_unix_s: u64,
    recorder_version: String,
    kernel_command_line: String,
}

/// The machine configuration of formats 3 and 4: no MSR table.
#[derive(Deserialize)]
pub(super) struct MachineConfig {
    #[serde(deserialize_with = "super::limits::regions")]
    regions: Vec<MemoryRegion>,
    tsc_khz: Option<u32>,
    counter: CounterSourceKind,
    quirks: state::Quirks,
}

impl From<MachineConfig> for state::MachineConfig {
    fn from(m: MachineConfig) -> Self {
        state::MachineConfig {
            regions: m.regions,
            tsc_khz: m.tsc_khz,
            counter: m.counter,
            quirks: m.quirks,
            msrs: Default::default(),
        }
    }
}

impl From<Header> for super::Header {
    fn from(h: Header) -> Self {
        super::Header {
            format_version: h.format_version,
            machine: h.machine.into(),
            cpuid: h.cpuid,
            kernel: h.kernel,
            symbols: h.symbols,
            kernel_image: h.kernel_image,
            command_line: h.command_line,
            created_unix_s: h.created_unix_s,
            recorder_version: h.recorder_version,
            kernel_command_line: h.kernel_command_line,
        }
    }
}
