//! Format 2, which this build still reads: the stored types that changed in format 3,
//! as format 2 wrote them, and their conversion.
//!
//! Format 3 added the recording host's undefined results to the header
//! ([`crate::state::Quirks::undefined`]; a format 2 recording replays with
//! [`UndefinedBehaviour::legacy`], as it always did) and the full registers to digests
//! (format 2 stored their hash: [`DigestRegisters::Hash`]). Everything else is shared.
//! Format 5's MSR table is empty for it, as for formats 3 and 4 ([`super::v4`]).

use serde::Deserialize;

use crate::cpu::undefined::UndefinedBehaviour;
use crate::event::{self, DigestRegisters, Icount};
use crate::state::{self, CounterSourceKind, CpuidEntry, KernelIdentity, MemoryRegion, Symbol};

/// The format version this module reads.
pub const VERSION: u32 = 2;

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

#[derive(Deserialize)]
struct MachineConfig {
    #[serde(deserialize_with = "super::limits::regions")]
    regions: Vec<MemoryRegion>,
    tsc_khz: Option<u32>,
    counter: CounterSourceKind,
    quirks: Quirks,
}

#[derive(Deserialize)]
struct Quirks {
    bit_scan_ignores_rep: bool,
}

impl From<Header> for super::Header {
    fn from(h: Header) -> Self {
        super::Header {
            format_version: h.format_version,
            machine: state::MachineConfig {
                regions: h.machine.regions,
                tsc_khz: h.machine.tsc_khz,
                counter: h.machine.counter,
                quirks: state::Quirks {
                    bit_scan_ignores_rep: h.machine.quirks.bit_scan_ignores_rep,
                    undefined: UndefinedBehaviour::legacy(),
                },
                msrs: Default::default(),
            },
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

/// [`event::Event`] as format 2 stored it (same variants, same order).
#[derive(Deserialize)]
pub enum Event {
    UserEntry(event::UserEntry),
    KernelInterrupt(event::KernelInterrupt),
    PortIn(event::PortIn),
    MmioRead(event::MmioRead),
    MemoryWrite(event::MemoryWrite),
    UserRead(event::UserRead),
    PteRead(event::PteRead),
    Random(event::RandomValue),
    Console(event::ConsoleOutput),
    Digest(Digest),
}

#[derive(Deserialize)]
pub struct Digest {
    icount: Icount,
    rip: u64,
    regs: u64,
    stack: Option<u64>,
}

impl From<Event> for event::Event {
    fn from(e: Event) -> Self {
        use event::Event as E;
        match e {
            Event::UserEntry(x) => E::UserEntry(x),
            Event::KernelInterrupt(x) => E::KernelInterrupt(x),
            Event::PortIn(x) => E::PortIn(x),
            Event::MmioRead(x) => E::MmioRead(x),
            Event::MemoryWrite(x) => E::MemoryWrite(x),
            Event::UserRead(x) => E::UserRead(x),
            Event::PteRead(x) => E::PteRead(x),
            Event::Random(x) => E::Random(x),
            Event::Console(x) => E::Console(x),
            Event::Digest(d) => E::Digest(event::Digest {
                icount: d.icount,
                rip: d.rip,
                registers: DigestRegisters::Hash(d.regs),
                stack: d.stack,
            }),
        }
    }
}
