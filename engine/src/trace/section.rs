//! Section framing: the fixed file preamble and footer, section headers, checksums and
//! bounded reads.
//!
//! Layout of a section header (72 bytes, little endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4  | magic `KRRS` |
//! | 4  | 4  | kind ([`SectionKind`]) |
//! | 8  | 8  | compressed payload length |
//! | 16 | 8  | uncompressed payload length |
//! | 24 | 32 | four kind-specific `u64` (for event chunks: first event, count, first and last icount) |
//! | 56 | 8  | FNV-1a of the compressed payload |
//! | 64 | 8  | FNV-1a of bytes 0..64 of this header |
//!
//! The payload follows: zstd of the postcard encoding of the section's value. The header
//! has its own checksum so that a reader can trust its lengths before reading a payload.

use std::io::{Read, Seek, SeekFrom, Write};

use zstd::stream::raw::Operation;

use crate::state::Fnv1a;

use super::error::{Result, TraceError};

/// Magic bytes at offset 0 of a recording.
pub const FILE_MAGIC: [u8; 8] = *b"\x89KRRREC\n";
/// Magic bytes at the very end of a finished recording.
pub const FOOTER_MAGIC: [u8; 8] = *b"KRREND\r\n";
/// Magic bytes that open every section header.
pub const SECTION_MAGIC: [u8; 4] = *b"KRRS";

/// File preamble: magic, format version (u32), reserved (u32, zero).
pub const PREAMBLE_LEN: u64 = 16;
/// Section header length.
pub const SECTION_HEADER_LEN: u64 = 72;
/// Footer: trailer offset (u64), FNV-1a of that offset (u64), magic.
pub const FOOTER_LEN: u64 = 24;

/// Largest uncompressed payload of one section. Declared lengths above it are rejected
/// before anything is allocated.
pub const MAX_SECTION_UNCOMPRESSED: u64 = 64 << 20;
/// Largest compressed payload of one section (zstd's bound for the largest input).
pub const MAX_SECTION_COMPRESSED: u64 =
    MAX_SECTION_UNCOMPRESSED + (MAX_SECTION_UNCOMPRESSED >> 7) + (1 << 16);

/// Fuzzing builds (`cargo fuzz` sets `cfg(fuzzing)`) accept wrong checksums, so that the
/// fuzzer reaches the decoders behind them instead of stopping at the first checksum.
const SKIP_CHECKSUMS: bool = cfg!(fuzzing);

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// [`super::Header`]. Always the first section.
    Header = 1,
    /// The snapshot's [`crate::state::CpuState`].
    SnapshotBegin = 2,
    /// Up to [`super::PAGES_PER_SECTION`] snapshot pages. Meta 0: page count.
    SnapshotPages = 3,
    /// End of the snapshot. Meta 0: total pages, meta 1: page sections.
    SnapshotEnd = 4,
    /// A chunk of events. Meta: first event, count, first icount, last icount.
    EventChunk = 5,
    /// Chunk index and statistics. Followed only by the footer.
    Trailer = 6,
}

impl SectionKind {
    pub fn from_u32(v: u32) -> Option<SectionKind> {
        Some(match v {
            1 => SectionKind::Header,
            2 => SectionKind::SnapshotBegin,
            3 => SectionKind::SnapshotPages,
            4 => SectionKind::SnapshotEnd,
            5 => SectionKind::EventChunk,
            6 => SectionKind::Trailer,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Header => "header",
            SectionKind::SnapshotBegin => "snapshot CPU state",
            SectionKind::SnapshotPages => "snapshot pages",
            SectionKind::SnapshotEnd => "snapshot end",
            SectionKind::EventChunk => "event chunk",
            SectionKind::Trailer => "trailer",
        }
    }
}

/// FNV-1a of `bytes`, the checksum of headers, payloads and the footer.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(bytes);
    h.finish()
}

/// A decoded, validated section header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionHeader {
    pub kind: SectionKind,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
    pub meta: [u64; 4],
    pub payload_checksum: u64,
}

impl SectionHeader {
    pub fn encode(&self) -> [u8; SECTION_HEADER_LEN as usize] {
        let mut b = [0u8; SECTION_HEADER_LEN as usize];
        b[0..4].copy_from_slice(&SECTION_MAGIC);
        b[4..8].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        for (i, m) in self.meta.iter().enumerate() {
            b[24 + 8 * i..32 + 8 * i].copy_from_slice(&m.to_le_bytes());
        }
        b[56..64].copy_from_slice(&self.payload_checksum.to_le_bytes());
        let hc = checksum(&b[0..64]);
        b[64..72].copy_from_slice(&hc.to_le_bytes());
        b
    }

    /// Decodes and checks a header read at `offset` of a file of `file_size` bytes:
    /// magic, header checksum, kind, and both lengths against the limits and the bytes
    /// the file has left.
    pub fn decode(
        b: &[u8; SECTION_HEADER_LEN as usize],
        offset: u64,
        file_size: u64,
    ) -> Result<Self> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let what = "section";
        if b[0..4] != SECTION_MAGIC {
            return Err(TraceError::corrupt(
                offset,
                what,
                format!("bad section magic {:02x?}", &b[0..4]),
            ));
        }
        let stored = u64_at(64);
        let computed = checksum(&b[0..64]);
        if stored != computed && !SKIP_CHECKSUMS {
            return Err(TraceError::corrupt(
                offset,
                what,
                format!(
                    "header checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
                ),
            ));
        }
        let raw_kind = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        let kind = SectionKind::from_u32(raw_kind).ok_or_else(|| {
            TraceError::corrupt(offset, what, format!("unknown section kind {raw_kind}"))
        })?;
        let what = kind.name();
        let compressed_len = u64_at(8);
        let uncompressed_len = u64_at(16);
        if uncompressed_len > MAX_SECTION_UNCOMPRESSED {
            return Err(TraceError::corrupt(
                offset,
                what,
                format!(
                    "header claims a {uncompressed_len}-byte payload, more than the limit of {MAX_SECTION_UNCOMPRESSED} bytes"
                ),
            ));
        }
        if compressed_len > MAX_SECTION_COMPRESSED {
            return Err(TraceError::corrupt(
                offset,
                what,
                format!(
                    "header claims a {compressed_len}-byte section, more than the limit of {MAX_SECTION_COMPRESSED} bytes (file has {file_size} bytes)"
                ),
            ));
        }
        let payload_start = offset + SECTION_HEADER_LEN;
        let remaining = file_size.saturating_sub(payload_start);
        if compressed_len > remaining {
            return Err(TraceError::truncated(
                offset,
                format!(
                    "{what} (header claims a {compressed_len}-byte payload, the file has {remaining} bytes after the header)"
                ),
            ));
        }
        let mut meta = [0u64; 4];
        for (i, m) in meta.iter_mut().enumerate() {
            *m = u64_at(24 + 8 * i);
        }
        Ok(SectionHeader {
            kind,
            compressed_len,
            uncompressed_len,
            meta,
            payload_checksum: u64_at(56),
        })
    }

    /// Offset just past this section, if it starts at `offset`.
    pub fn end(&self, offset: u64) -> u64 {
        offset + SECTION_HEADER_LEN + self.compressed_len
    }
}

/// Encodes the preamble for format `version`.
pub fn encode_preamble(version: u32) -> [u8; PREAMBLE_LEN as usize] {
    let mut b = [0u8; PREAMBLE_LEN as usize];
    b[0..8].copy_from_slice(&FILE_MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    b
}

/// Encodes the footer pointing at the trailer section.
pub fn encode_footer(trailer_offset: u64) -> [u8; FOOTER_LEN as usize] {
    let mut b = [0u8; FOOTER_LEN as usize];
    b[0..8].copy_from_slice(&trailer_offset.to_le_bytes());
    b[8..16].copy_from_slice(&checksum(&trailer_offset.to_le_bytes()).to_le_bytes());
    b[16..24].copy_from_slice(&FOOTER_MAGIC);
    b
}

/// The trailer offset a footer names, or why the footer is not valid.
pub fn decode_footer(b: &[u8; FOOTER_LEN as usize]) -> std::result::Result<u64, String> {
    if b[16..24] != FOOTER_MAGIC {
        return Err("no footer (the recording was not finished)".into());
    }
    let off = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    if sum != checksum(&off.to_le_bytes()) && !SKIP_CHECKSUMS {
        return Err("footer checksum mismatch".into());
    }
    Ok(off)
}

/// Compresses payloads and writes sections. Keeps its zstd context and output buffer
/// between sections.
pub struct SectionEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
}

impl SectionEncoder {
    pub fn new(level: i32) -> Result<Self> {
        Ok(SectionEncoder {
            compressor: zstd::bulk::Compressor::new(level)?,
            compressed: Vec::new(),
        })
    }

    /// Writes one section and returns its total length. `what` names the payload in a
    /// size error.
    pub fn write<W: Write>(
        &mut self,
        out: &mut W,
        kind: SectionKind,
        meta: [u64; 4],
        payload: &[u8],
        what: &str,
    ) -> Result<u64> {
        if payload.len() as u64 > MAX_SECTION_UNCOMPRESSED {
            return Err(TraceError::TooLarge {
                what: what.to_string(),
                size: payload.len() as u64,
                limit: MAX_SECTION_UNCOMPRESSED,
            });
        }
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(payload.len()));
        self.compressor
            .compress_to_buffer(payload, &mut self.compressed)?;
        let header = SectionHeader {
            kind,
            compressed_len: self.compressed.len() as u64,
            uncompressed_len: payload.len() as u64,
            meta,
            payload_checksum: checksum(&self.compressed),
        };
        out.write_all(&header.encode())?;
        out.write_all(&self.compressed)?;
        Ok(SECTION_HEADER_LEN + self.compressed.len() as u64)
    }
}

/// Buffers larger than this are freed after use instead of kept for the next section.
const RETAINED_BUFFER: usize = 8 << 20;

/// Reads sections with bounded allocations. Keeps its zstd context and buffers between
/// sections, so at most one compressed and one decompressed payload are held (buffers
/// that a big section grew are given back).
pub struct SectionDecoder {
    dctx: zstd::stream::raw::Decoder<'static>,
    compressed: Vec<u8>,
    payload: Vec<u8>,
}

impl SectionDecoder {
    pub fn new() -> Result<Self> {
        let mut dctx = zstd::stream::raw::Decoder::new()?;
        dctx.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            super::limits::MAX_WINDOW_LOG,
        ))?;
        Ok(SectionDecoder {
            dctx,
            compressed: Vec::new(),
            payload: Vec::new(),
        })
    }

    /// Reads and validates the header of the section at `offset`.
    pub fn read_header<R: Read + Seek>(
        &mut self,
        r: &mut R,
        offset: u64,
        file_size: u64,
    ) -> Result<SectionHeader> {
        if offset
            .checked_add(SECTION_HEADER_LEN)
            .is_none_or(|end| end > file_size)
        {
            return Err(TraceError::truncated(
                offset,
                format!(
                    "section header ({} of {SECTION_HEADER_LEN} bytes present)",
                    file_size.saturating_sub(offset)
                ),
            ));
        }
        let mut b = [0u8; SECTION_HEADER_LEN as usize];
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(&mut b)?;
        SectionHeader::decode(&b, offset, file_size)
    }

    /// Reads, checks and decompresses the payload of the section whose header `h` was
    /// read at `offset`. `what` names the section in errors ("event chunk 7").
    pub fn read_payload<R: Read + Seek>(
        &mut self,
        r: &mut R,
        h: &SectionHeader,
        offset: u64,
        what: &str,
    ) -> Result<&[u8]> {
        if self.compressed.capacity() > RETAINED_BUFFER {
            self.compressed = Vec::new();
        }
        if self.payload.capacity() > RETAINED_BUFFER {
            self.payload = Vec::new();
        }
        // Both lengths were checked against the limits and the file size by decode():
        // the compressed bytes are present in the file.
        self.compressed.clear();
        self.compressed.resize(h.compressed_len as usize, 0);
        r.seek(SeekFrom::Start(offset + SECTION_HEADER_LEN))?;
        r.read_exact(&mut self.compressed)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => TraceError::truncated(offset, what),
                _ => TraceError::Io(e),
            })?;
        let computed = checksum(&self.compressed);
        if computed != h.payload_checksum && !SKIP_CHECKSUMS {
            return Err(TraceError::corrupt(
                offset,
                what,
                format!(
                    "checksum mismatch (stored {:#018x}, computed {computed:#018x})",
                    h.payload_checksum
                ),
            ));
        }
        self.decompress(h.uncompressed_len, offset, what)?;
        // Not held while the caller decodes the payload.
        if self.compressed.capacity() > RETAINED_BUFFER {
            self.compressed = Vec::new();
        }
        Ok(&self.payload)
    }

    /// Decompresses `self.compressed` (one zstd frame) into `self.payload`, which must
    /// come to `declared` bytes: the frame's own content size must agree, and the output
    /// grows only as zstd produces it, never past `declared`.
    fn decompress(&mut self, declared: u64, offset: u64, what: &str) -> Result<()> {
        let bad = |problem: String| TraceError::corrupt(offset, what, problem);
        match zstd::zstd_safe::get_frame_content_size(&self.compressed) {
            Ok(Some(n)) if n != declared => {
                return Err(bad(format!(
                    "its zstd frame declares {n} bytes, the section header {declared}"
                )));
            }
            Ok(_) => {}
            Err(_) => return Err(bad("payload is not a zstd frame".into())),
        }
        // declared <= MAX_SECTION_UNCOMPRESSED (checked by SectionHeader::decode).
        let limit = declared as usize;
        self.payload.clear();
        self.dctx.reinit().map_err(|e| bad(format!("zstd: {e}")))?;
        let mut input = zstd::stream::raw::InBuffer::around(&self.compressed);
        loop {
            if self.payload.len() == self.payload.capacity() {
                // One byte past the declared size shows a frame that is longer.
                let room = self
                    .payload
                    .len()
                    .max(64 << 10)
                    .min(limit + 1 - self.payload.len());
                self.payload.reserve_exact(room);
            }
            let before = (input.pos(), self.payload.len());
            let pos = self.payload.len();
            // The output buffer sets the payload's length to what zstd wrote.
            let remaining = {
                let mut out = zstd::stream::raw::OutBuffer::around_pos(&mut self.payload, pos);
                self.dctx
                    .run(&mut input, &mut out)
                    .map_err(|e| bad(format!("zstd: {e}")))?
            };
            if self.payload.len() > limit {
                return Err(bad(format!(
                    "payload decompresses to more than the {declared} bytes the header says"
                )));
            }
            if remaining == 0 {
                break;
            }
            // No progress with room to write: the input ran out inside the frame.
            if (input.pos(), self.payload.len()) == before
                && self.payload.len() < self.payload.capacity()
            {
                return Err(bad("zstd: the frame ends early".into()));
            }
        }
        if input.pos() != self.compressed.len() {
            return Err(bad(format!(
                "{} bytes after the zstd frame",
                self.compressed.len() - input.pos()
            )));
        }
        if self.payload.len() != limit {
            return Err(bad(format!(
                "payload decompresses to {} bytes, header says {declared}",
                self.payload.len()
            )));
        }
        Ok(())
    }
}

/// Decodes a postcard value that must fill `bytes` exactly.
pub fn decode_exact<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    offset: u64,
    what: &str,
) -> Result<T> {
    super::limits::take_refusal();
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| {
        let problem =
            super::limits::take_refusal().unwrap_or_else(|| format!("cannot decode payload: {e}"));
        TraceError::corrupt(offset, what, problem)
    })?;
    if !rest.is_empty() {
        return Err(TraceError::corrupt(
            offset,
            what,
            format!("{} bytes left over after the payload", rest.len()),
        ));
    }
    Ok(v)
}
