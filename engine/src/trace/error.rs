//! Errors of the recording format. Every message says what is wrong and where.

use std::io;

impl From<io::Error> for TraceError {
    fn from(e: io::Error) -> Self {
        TraceError::Io(e)
    }
}

/// What went wrong reading or writing a recording.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The message includes the I/O error's, so it is not also given as the source
    /// (a report that prints the chain would say it twice).
    #[error("I/O error: {0}")]
    Io(io::Error),

    /// The file does not start with the recording magic.
    #[error("not a krr-tui recording: bad magic bytes {found:02x?} at offset 0")]
    BadMagic { found: Vec<u8> },

    #[error("unsupported format version {found} (this build reads versions 2 to {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },

    /// The file ends inside a structure the reader needs.
    #[error("truncated at offset {offset} in {what}")]
    Truncated { offset: u64, what: String },

    /// A structure is present but wrong (checksum, length, kind, contents).
    #[error("{what} at offset {offset}: {problem}")]
    Corrupt {
        offset: u64,
        what: String,
        problem: String,
    },

    #[error("event {index} out of range: the recording has {count} events")]
    EventOutOfRange { index: u64, count: u64 },

    /// Something the writer was asked to store exceeds a format limit.
    #[error("{what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },

    /// The writer's methods were called out of order (a programming error).
    #[error("recording writer: {0}")]
    Usage(String),

    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

impl TraceError {
    pub(crate) fn corrupt(
        offset: u64,
        what: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        TraceError::Corrupt {
            offset,
            what: what.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn truncated(offset: u64, what: impl Into<String>) -> Self {
        TraceError::Truncated {
            offset,
            what: what.into(),
        }
    }
}

pub type Result<T, E = TraceError> = std::result::Result<T, E>;
