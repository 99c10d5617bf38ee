//! The recording file format (DESIGN.md section 8).
//!
//! A recording is one file:
//!
//! ```text
//! preamble   magic "\x89KRRREC\n", format version (u32 LE), reserved (u32)   16 bytes
//! section    Header                                  machine, CPUID, kernel, symbols, ...
//! section    SnapshotBegin                           CpuState
//! section*   SnapshotPages                           at most PAGES_PER_SECTION non-zero pages
//! section    SnapshotEnd                             page and section counts
//! section*   EventChunk                              postcard Vec<Event>, flushed as recorded
//! section    Trailer                                 chunk index and statistics
//! footer     trailer offset, its FNV-1a, magic "KRREND\r\n"                 24 bytes
//! ```
//!
//! Every section is a 72-byte header (kind, lengths, kind-specific values, checksums; see
//! [`section`]) and a zstd-compressed postcard payload. Event chunks are written and
//! flushed as soon as they are full, so a recorder killed at any moment leaves every
//! complete chunk on disk; [`RecordingReader::open`] then rebuilds the index by scanning
//! and reports what was lost in a [`Recovery`].
//!
//! postcard is not self-describing: any change to a stored type (including the event
//! types in [`crate::event`]) needs a new [`FORMAT_VERSION`], and the reader keeps
//! reading the old ones through a module of their types as they were ([`v2`], [`v3`],
//! [`v4`]).

mod chunk_cache;
mod error;
pub mod limits;
mod reader;
pub mod section;
mod stats;
mod v2;
mod v3;
mod v4;
mod writer;

use serde::{Deserialize, Serialize};

use crate::state::{CpuidEntry, KernelIdentity, MachineConfig, Symbol};

pub use chunk_cache::{CacheUsage, ChunkCache, EventChunk, EventSource, MAX_CACHED_CHUNKS};
pub use error::{Result, TraceError};
pub use reader::{EventsFrom, RecordingReader, RecordingSource, Recovery, SnapshotPages};
pub use stats::Stats;
pub use writer::{FinishInfo, RecordingWriter, WriterConfig};

/// The format version this build writes. It also reads formats 2 ([`v2`]), 3 ([`v3`])
/// and 4 ([`v4`]).
pub const FORMAT_VERSION: u32 = 5;

/// Most pages in one snapshot section (4 MiB uncompressed).
pub const PAGES_PER_SECTION: usize = 1024;

/// What a recording says about the machine it was made on. The first section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT_VERSION`] when written; checked against the preamble when read.
    pub format_version: u32,
    pub machine: MachineConfig,
    #[serde(deserialize_with = "limits::cpuid")]
    pub cpuid: Vec<CpuidEntry>,
    pub kernel: KernelIdentity,
    #[serde(deserialize_with = "limits::symbols")]
    pub symbols: Vec<Symbol>,
    /// The kernel ELF image itself, for small kernels (the built-in demo), so replay can
    /// show symbols and source without the original file.
    pub kernel_image: Option<Vec<u8>>,
    /// The command line that made the recording.
    pub command_line: String,
    /// When recording started, in seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// Version of the program that wrote the recording.
    pub recorder_version: String,
    /// The command line the guest kernel was given (a Linux kernel: what the recorder
    /// gives this host's guests, then the user's `--cmdline`); empty for a kernel that
    /// takes none (the demo) and in format 3 recordings and older.
    pub kernel_command_line: String,
}

impl Header {
    /// A header for this format version with empty tables, created now.
    pub fn new(machine: MachineConfig, kernel: KernelIdentity) -> Self {
        Header {
            format_version: FORMAT_VERSION,
            machine,
            cpuid: Vec::new(),
            kernel,
            symbols: Vec::new(),
            kernel_image: None,
            command_line: String::new(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            recorder_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_command_line: String::new(),
        }
    }
}

/// Where one event chunk is and what it holds (an entry of the trailer's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Offset of the chunk's section header in the file.
    pub offset: u64,
    /// Number of the chunk's first event (events are numbered from 0 over the recording).
    pub first_event: u64,
    pub count: u32,
    /// `icount` of the chunk's first and last event.
    pub first_icount: u64,
    pub last_icount: u64,
}

impl ChunkInfo {
    /// One past the number of the chunk's last event.
    pub fn end_event(&self) -> u64 {
        self.first_event + u64::from(self.count)
    }
}
