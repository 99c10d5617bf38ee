//! Format 3, which this build still reads: its header, which format 4 extended with the
//! kernel's command line ([`super::Header::kernel_command_line`]; a format 3 recording
//! has none stored: empty); its machine configuration is format 4's ([`super::v4`]).
//! Its events are those of the current format.

use serde::Deserialize;

use super::v4::MachineConfig;
use crate::state::{CpuidEntry, KernelIdentity, Symbol};

/// The format version this module reads.
pub const VERSION: u32 = 3;

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
            kernel_command_line: String::new(),
        }
    }
}
