//! Writing a recording as it is made.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::event::{Event, Icount};
use crate::state::{CpuState, PAGE_SIZE, Snapshot};

use super::error::{Result, TraceError};
use super::limits::{self, MAX_CHUNK_EVENTS};
use super::section::{
    MAX_SECTION_UNCOMPRESSED, SectionEncoder, SectionKind, encode_footer, encode_preamble,
};
use super::stats::{KindCounts, Stats, StoredStats};
use super::{ChunkInfo, FORMAT_VERSION, Header, PAGES_PER_SECTION};

/// When event chunks are cut, and how hard they are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// A chunk is written when it holds this many events...
    pub chunk_events: usize,
    /// ...or this many uncompressed bytes, whichever comes first.
    pub chunk_bytes: usize,
    /// zstd compression level.
    pub zstd_level: i32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            chunk_events: 4096,
            chunk_bytes: 256 << 10,
            zstd_level: 3,
        }
    }
}

/// What the recorder knows only at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishInfo {
    /// Guest ring-0 instructions recorded.
    pub kernel_instructions: u64,
    /// Wall-clock length of the recording in seconds.
    pub duration_s: f64,
    /// Why recording ended ("guest powered off", "interrupted (SIGINT)", "error: ...").
    pub end_reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NeedHeader,
    NeedSnapshot,
    InSnapshot,
    Events,
    Finished,
    /// A write failed; the file's end is unknown, so nothing more is written.
    Failed,
}

/// Room kept at the front of the chunk and page buffers for the postcard length prefix
/// of the `Vec`, so the payload is encoded in place (a varint u64 takes at most 10 bytes).
const PREFIX: usize = 10;

/// Writes a recording: [`write_header`](Self::write_header), the snapshot
/// ([`write_snapshot`](Self::write_snapshot) or [`begin_snapshot`](Self::begin_snapshot)
/// and [`add_page`](Self::add_page)), events with [`push`](Self::push), then
/// [`finish`](Self::finish).
///
/// Every section is written and flushed as soon as it is complete. Dropping the writer
/// without `finish` writes the buffered events as a last chunk (best effort) and leaves
/// a recording without trailer, which the reader recovers.
pub struct RecordingWriter<W: Write> {
    out: Option<W>,
    cfg: WriterConfig,
    enc: SectionEncoder,
    phase: Phase,
    /// Bytes written so far (the offset of the next section).
    offset: u64,

    pages: Vec<u8>,
    section_pages: usize,
    total_pages: u64,
    page_sections: u64,

    chunk: Vec<u8>,
    chunk_count: usize,
    chunk_first_icount: Icount,
    chunk_last_icount: Icount,
    next_event: u64,
    index: Vec<ChunkInfo>,
    counts: KindCounts,
    event_bytes: u64,
    /// Whether the header's positions are instruction counts (see [`Stats::counted`]).
    counted: bool,
}

impl RecordingWriter<File> {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(File::create(path)?)
    }
}

impl<W: Write> RecordingWriter<W> {
    pub fn new(out: W) -> Result<Self> {
        Self::with_config(out, WriterConfig::default())
    }

    pub fn with_config(out: W, cfg: WriterConfig) -> Result<Self> {
        let max_bytes = (MAX_SECTION_UNCOMPRESSED / 2) as usize;
        if cfg.zstd_level > limits::MAX_ZSTD_LEVEL {
            return Err(TraceError::Usage(format!(
                "zstd level {} is above {}, whose window the reader takes",
                cfg.zstd_level,
                limits::MAX_ZSTD_LEVEL
            )));
        }
        if cfg.chunk_events == 0
            || cfg.chunk_events as u64 > MAX_CHUNK_EVENTS
            || cfg.chunk_bytes == 0
            || cfg.chunk_bytes > max_bytes
        {
            return Err(TraceError::Usage(format!(
                "chunk limits must be 1..={MAX_CHUNK_EVENTS} events and 1..={max_bytes} bytes, got {} and {}",
                cfg.chunk_events, cfg.chunk_bytes
            )));
        }
        let mut chunk = Vec::with_capacity(PREFIX + cfg.chunk_bytes + 4096);
        chunk.resize(PREFIX, 0);
        Ok(RecordingWriter {
            out: Some(out),
            cfg,
            enc: SectionEncoder::new(cfg.zstd_level)?,
            phase: Phase::NeedHeader,
            offset: 0,
            pages: vec![0; PREFIX],
            section_pages: 0,
            total_pages: 0,
            page_sections: 0,
            chunk,
            chunk_count: 0,
            chunk_first_icount: 0,
            chunk_last_icount: 0,
            next_event: 0,
            index: Vec::new(),
            counts: KindCounts::default(),
            event_bytes: 0,
            counted: true,
        })
    }

    /// Writes the preamble and the header. Must come first.
    pub fn write_header(&mut self, header: &Header) -> Result<()> {
        self.expect(Phase::NeedHeader, "write_header")?;
        if header.format_version != FORMAT_VERSION {
            return Err(TraceError::Usage(format!(
                "header.format_version is {}, this writer writes version {FORMAT_VERSION}",
                header.format_version
            )));
        }
        // What the reader would refuse is refused here, before anything is written.
        let counts = [
            ("symbols", header.symbols.len(), limits::MAX_SYMBOLS),
            (
                "CPUID entries",
                header.cpuid.len(),
                limits::MAX_CPUID_ENTRIES,
            ),
            (
                "memory regions",
                header.machine.regions.len(),
                crate::memory::MAX_REGIONS,
            ),
        ];
        for (what, n, max) in counts {
            if n > max {
                return Err(TraceError::Usage(format!(
                    "the header has {n} {what}, more than the {max} a recording may hold"
                )));
            }
        }
        let guest: u128 = header
            .machine
            .regions
            .iter()
            .map(|r| u128::from(r.size))
            .sum();
        if guest > u128::from(crate::memory::MAX_GUEST_MEMORY) {
            return Err(TraceError::Usage(format!(
                "the guest has {guest} bytes of memory, more than the {} replay takes",
                crate::memory::MAX_GUEST_MEMORY
            )));
        }
        self.counted = header.machine.counter != crate::state::CounterSourceKind::None;
        let payload = encode(header, "header")?;
        if payload.len() as u64 > MAX_SECTION_UNCOMPRESSED {
            // Checked before the preamble is written, so the caller can retry without
            // the kernel image.
            return Err(TraceError::TooLarge {
                what: "header (with the embedded kernel image)".into(),
                size: payload.len() as u64,
                limit: MAX_SECTION_UNCOMPRESSED,
            });
        }
        self.guarded(|w| {
            let out = w.out.as_mut().expect("writer output present");
            out.write_all(&encode_preamble(FORMAT_VERSION))?;
            w.offset += super::section::PREAMBLE_LEN;
            w.write_section(SectionKind::Header, [0; 4], &payload, "header")?;
            Ok(())
        })?;
        self.phase = Phase::NeedSnapshot;
        Ok(())
    }

    /// Writes a whole snapshot (all-zero pages are omitted).
    pub fn write_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.begin_snapshot(&snapshot.cpu)?;
        for page in &snapshot.pages {
            let data: &[u8; PAGE_SIZE] = page.data.as_slice().try_into().map_err(|_| {
                TraceError::Usage(format!(
                    "snapshot page at {:#x} has {} bytes, not {PAGE_SIZE}",
                    page.gpa,
                    page.data.len()
                ))
            })?;
            self.add_page(page.gpa, data)?;
        }
        self.end_snapshot()
    }

    /// Starts the snapshot with the CPU state; pages follow with [`add_page`](Self::add_page).
    pub fn begin_snapshot(&mut self, cpu: &CpuState) -> Result<()> {
        self.expect(Phase::NeedSnapshot, "begin_snapshot")?;
        let payload = encode(cpu, "snapshot CPU state")?;
        self.guarded(|w| {
            w.write_section(
                SectionKind::SnapshotBegin,
                [0; 4],
                &payload,
                "snapshot CPU state",
            )
            .map(drop)
        })?;
        self.phase = Phase::InSnapshot;
        Ok(())
    }

    /// Adds one guest page to the snapshot. All-zero pages are skipped (absent pages
    /// are zero). At most [`PAGES_PER_SECTION`] pages are buffered.
    pub fn add_page(&mut self, gpa: u64, data: &[u8; PAGE_SIZE]) -> Result<()> {
        self.expect(Phase::InSnapshot, "add_page")?;
        if !gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(TraceError::Usage(format!(
                "snapshot page address {gpa:#x} is not page aligned"
            )));
        }
        if data.iter().all(|b| *b == 0) {
            return Ok(());
        }
        // The postcard encoding of a SnapshotPage, without serde's byte-by-byte Vec<u8>.
        put_varint(&mut self.pages, gpa);
        put_varint(&mut self.pages, PAGE_SIZE as u64);
        self.pages.extend_from_slice(data);
        self.section_pages += 1;
        self.total_pages += 1;
        if self.section_pages == PAGES_PER_SECTION {
            self.guarded(|w| w.flush_pages())?;
        }
        Ok(())
    }

    /// Ends the snapshot. [`push`](Self::push) and [`finish`](Self::finish) end it
    /// implicitly.
    pub fn end_snapshot(&mut self) -> Result<()> {
        self.expect(Phase::InSnapshot, "end_snapshot")?;
        self.guarded(|w| {
            w.flush_pages()?;
            let meta = [w.total_pages, w.page_sections, 0, 0];
            w.write_section(SectionKind::SnapshotEnd, meta, &[], "snapshot end")?;
            Ok(())
        })?;
        self.phase = Phase::Events;
        Ok(())
    }

    /// Appends an event. A full chunk is compressed, written and flushed to the OS.
    pub fn push(&mut self, event: Event) -> Result<()> {
        if self.phase == Phase::InSnapshot {
            self.end_snapshot()?;
        }
        self.expect(Phase::Events, "push")?;
        let before = self.chunk.len();
        serialize_into(&event, &mut self.chunk, "event")?;
        let limit = (MAX_SECTION_UNCOMPRESSED as usize) - PREFIX;
        if self.chunk.len() - PREFIX > limit {
            // A huge event: write what was buffered, then give the event a chunk alone.
            let bytes = self.chunk.split_off(before);
            if bytes.len() > limit {
                return Err(TraceError::TooLarge {
                    what: format!("event {} ({})", self.next_event, event.kind().name()),
                    size: bytes.len() as u64,
                    limit: limit as u64,
                });
            }
            self.guarded(|w| w.flush_chunk())?;
            self.chunk.extend_from_slice(&bytes);
        }
        let icount = event.icount();
        if self.chunk_count == 0 {
            self.chunk_first_icount = icount;
        }
        self.chunk_last_icount = icount;
        self.chunk_count += 1;
        self.next_event += 1;
        self.counts.add(event.kind());
        if self.chunk_count >= self.cfg.chunk_events
            || self.chunk.len() - PREFIX >= self.cfg.chunk_bytes
        {
            self.guarded(|w| w.flush_chunk())?;
        }
        Ok(())
    }

    /// Writes the buffered events as a chunk now, even if it is not full, and flushes
    /// it to the OS. A recorder calls this periodically so that a crash or a kill loses
    /// at most the events since the last call.
    pub fn flush_events(&mut self) -> Result<()> {
        if self.phase == Phase::InSnapshot {
            self.end_snapshot()?;
        }
        self.expect(Phase::Events, "flush_events")?;
        self.guarded(|w| w.flush_chunk())
    }

    /// Events pushed so far.
    pub fn event_count(&self) -> u64 {
        self.next_event
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Writes the last chunk, the trailer and the footer, and flushes. Returns the
    /// statistics the trailer stores.
    pub fn finish(&mut self, info: FinishInfo) -> Result<Stats> {
        if self.phase == Phase::InSnapshot {
            self.end_snapshot()?;
        }
        self.expect(Phase::Events, "finish")?;
        let stored = StoredStats {
            counts: self.counts,
            total_events: self.next_event,
            kernel_instructions: info.kernel_instructions,
            duration_s: info.duration_s,
            end_reason: info.end_reason,
            event_bytes: 0,
        };
        let stored = self.guarded(move |w| {
            w.flush_chunk()?;
            let stored = StoredStats {
                event_bytes: w.event_bytes,
                ..stored
            };
            let payload = encode(&(&w.index, &stored), "trailer")?;
            let trailer_offset = w.offset;
            w.write_section(
                SectionKind::Trailer,
                [w.index.len() as u64, 0, 0, 0],
                &payload,
                "trailer",
            )?;
            let out = w.out.as_mut().expect("writer output present");
            out.write_all(&encode_footer(trailer_offset))?;
            out.flush()?;
            w.offset += super::section::FOOTER_LEN;
            Ok(stored)
        })?;
        self.phase = Phase::Finished;
        let mut stats = Stats::from_counts(&stored.counts, stored.total_events);
        stats.kernel_instructions = stored.kernel_instructions;
        stats.duration_s = stored.duration_s;
        stats.end_reason = stored.end_reason;
        stats.complete = true;
        stats.counted = self.counted;
        stats.set_sizes(self.offset, stored.event_bytes);
        Ok(stats)
    }

    /// The underlying writer (after [`finish`](Self::finish), the whole recording).
    pub fn into_inner(mut self) -> W {
        // Leaving the writer finished keeps Drop from writing anything more.
        if self.phase != Phase::Finished {
            self.phase = Phase::Failed;
        }
        self.out.take().expect("writer output present")
    }

    fn expect(&self, phase: Phase, call: &str) -> Result<()> {
        if self.phase == phase {
            return Ok(());
        }
        let why = match self.phase {
            Phase::NeedHeader => "the header has not been written",
            Phase::NeedSnapshot => "the snapshot has not been written",
            Phase::InSnapshot => "the snapshot is in progress",
            Phase::Events => "the snapshot was already written",
            Phase::Finished => "the recording is finished",
            Phase::Failed => "an earlier write failed",
        };
        Err(TraceError::Usage(format!("{call} called, but {why}")))
    }

    /// Runs a step that writes; a failure leaves the writer unusable.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let r = f(self);
        if r.is_err() {
            self.phase = Phase::Failed;
        }
        r
    }

    fn write_section(
        &mut self,
        kind: SectionKind,
        meta: [u64; 4],
        payload: &[u8],
        what: &str,
    ) -> Result<u64> {
        let out = self.out.as_mut().expect("writer output present");
        let n = self.enc.write(out, kind, meta, payload, what)?;
        out.flush()?;
        self.offset += n;
        Ok(n)
    }

    fn flush_pages(&mut self) -> Result<()> {
        if self.section_pages == 0 {
            return Ok(());
        }
        let mut pages = std::mem::take(&mut self.pages);
        let start = put_prefix(&mut pages, self.section_pages as u64);
        let r = self.write_section(
            SectionKind::SnapshotPages,
            [self.section_pages as u64, 0, 0, 0],
            &pages[start..],
            "snapshot pages",
        );
        pages.truncate(PREFIX);
        self.pages = pages;
        r?;
        self.section_pages = 0;
        self.page_sections += 1;
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<()> {
        if self.chunk_count == 0 {
            return Ok(());
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        let start = put_prefix(&mut chunk, self.chunk_count as u64);
        let info = ChunkInfo {
            offset: self.offset,
            first_event: self.next_event - self.chunk_count as u64,
            count: self.chunk_count as u32,
            first_icount: self.chunk_first_icount,
            last_icount: self.chunk_last_icount,
        };
        let meta = [
            info.first_event,
            u64::from(info.count),
            info.first_icount,
            info.last_icount,
        ];
        let r = self.write_section(
            SectionKind::EventChunk,
            meta,
            &chunk[start..],
            "event chunk",
        );
        chunk.truncate(PREFIX);
        self.chunk = chunk;
        let n = r?;
        self.event_bytes += n;
        self.index.push(info);
        self.chunk_count = 0;
        Ok(())
    }
}

impl<W: Write> Drop for RecordingWriter<W> {
    fn drop(&mut self) {
        if self.phase == Phase::Events && self.out.is_some() {
            // Best effort: the events are otherwise lost, and there is no one to tell.
            let _ = self.flush_chunk();
        }
    }
}

/// The postcard varint (LEB128) of `v` in `out`; returns its length.
fn varint(mut v: u64, out: &mut [u8; PREFIX]) -> usize {
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[n] = byte;
            return n + 1;
        }
        out[n] = byte | 0x80;
        n += 1;
    }
}

fn put_varint(buf: &mut Vec<u8>, v: u64) {
    let mut tmp = [0u8; PREFIX];
    let n = varint(v, &mut tmp);
    buf.extend_from_slice(&tmp[..n]);
}

/// Writes the postcard varint of `count` just before `buf[PREFIX..]` and returns where
/// the encoded `Vec` starts.
fn put_prefix(buf: &mut [u8], count: u64) -> usize {
    let mut tmp = [0u8; PREFIX];
    let n = varint(count, &mut tmp);
    let start = PREFIX - n;
    buf[start..PREFIX].copy_from_slice(&tmp[..n]);
    start
}

fn encode<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|source| TraceError::Encode { what, source })
}

/// A postcard flavor appending to a borrowed `Vec`, so chunks are encoded in place.
struct AppendVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn serialize_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    what: &'static str,
) -> Result<()> {
    let len = buf.len();
    postcard::serialize_with_flavor(value, AppendVec(buf)).map_err(|source| {
        buf.truncate(len);
        TraceError::Encode { what, source }
    })
}
