//! Reading a recording, finished or cut short.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::memory::{Page, PageSource};
use crate::state::{CounterSourceKind, CpuState, PAGE_SIZE, Snapshot, SnapshotPage};

use super::chunk_cache::{CacheUsage, ChunkCache, EventChunk, EventSource};
use super::error::{Result, TraceError};
use super::limits::MAX_CHUNK_EVENTS;
use super::section::{
    FILE_MAGIC, FOOTER_LEN, PREAMBLE_LEN, SECTION_HEADER_LEN, SectionDecoder, SectionHeader,
    SectionKind, decode_exact, decode_footer,
};
use super::stats::{KindCounts, Stats, StoredStats};
use super::{ChunkInfo, FORMAT_VERSION, Header, PAGES_PER_SECTION, v2, v3, v4};

/// How much of a recording could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The recording was finished: trailer and footer are intact and consistent.
    pub complete: bool,
    /// Events readable (for an incomplete recording: those of every complete,
    /// checksum-valid chunk before the first damage).
    pub valid_events: u64,
    /// Bytes after the last valid section (0 for a complete recording).
    pub lost_bytes: u64,
    /// Why the recording is incomplete and where the scan stopped (None if complete).
    pub reason: Option<String>,
}

/// A section of the snapshot: where it is and how many pages it holds.
#[derive(Debug, Clone, Copy)]
struct PageSection {
    offset: u64,
    header: SectionHeader,
}

/// Reads a recording. Opening reads the header, walks the snapshot's section headers
/// and loads the chunk index (from the trailer, or by scanning when the recording was
/// cut short). Events and snapshot pages are decoded on demand.
pub struct RecordingReader<R = File> {
    r: R,
    file_size: u64,
    dec: SectionDecoder,
    header: Header,
    snapshot_begin: (u64, SectionHeader),
    page_sections: Vec<PageSection>,
    total_pages: u64,
    index: Vec<ChunkInfo>,
    stats: Stats,
    recovery: Recovery,
    cache: Option<(usize, Vec<Event>)>,
    /// The file's format version ([`FORMAT_VERSION`] or an older one this build reads).
    version: u32,
}

impl RecordingReader<File> {
    /// Opens the recording at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_reader(File::open(path)?)
    }
}

impl RecordingReader<Cursor<Vec<u8>>> {
    /// Reads a recording held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_reader(Cursor::new(bytes))
    }
}

impl<R: Read + Seek> RecordingReader<R> {
    /// Reads a recording from any seekable source; offset 0 is the start of the recording.
    pub fn from_reader(mut r: R) -> Result<Self> {
        let file_size = r.seek(SeekFrom::End(0))?;
        let version = read_preamble(&mut r, file_size)?;
        let mut dec = SectionDecoder::new()?;

        let at = PREAMBLE_LEN;
        let h = dec
            .read_header(&mut r, at, file_size)
            .map_err(|e| in_context(e, "header"))?;
        if h.kind != SectionKind::Header {
            return Err(TraceError::corrupt(
                at,
                "first section",
                format!("is {}, expected the header", h.kind.name()),
            ));
        }
        let payload = dec.read_payload(&mut r, &h, at, "header")?;
        let header: Header = if version == v2::VERSION {
            decode_exact::<v2::Header>(payload, at, "header")?.into()
        } else if version == v3::VERSION {
            decode_exact::<v3::Header>(payload, at, "header")?.into()
        } else if version == v4::VERSION {
            decode_exact::<v4::Header>(payload, at, "header")?.into()
        } else {
            decode_exact(payload, at, "header")?
        };
        if header.format_version != version {
            return Err(TraceError::corrupt(
                at,
                "header",
                format!(
                    "says format version {}, the preamble says {version}",
                    header.format_version
                ),
            ));
        }

        // The snapshot: its sections' headers only; payloads are read by snapshot().
        let mut at = h.end(at);
        let begin = dec
            .read_header(&mut r, at, file_size)
            .map_err(|e| in_context(e, "snapshot"))?;
        if begin.kind != SectionKind::SnapshotBegin {
            return Err(TraceError::corrupt(
                at,
                "snapshot",
                format!("found {} where the snapshot begins", begin.kind.name()),
            ));
        }
        let snapshot_begin = (at, begin);
        at = begin.end(at);
        let mut page_sections = Vec::new();
        let mut pages_seen = 0u64;
        let total_pages = loop {
            let h = dec
                .read_header(&mut r, at, file_size)
                .map_err(|e| in_context(e, "snapshot"))?;
            match h.kind {
                SectionKind::SnapshotPages => {
                    let n = h.meta[0];
                    if n == 0
                        || n > PAGES_PER_SECTION as u64
                        || h.uncompressed_len < n * PAGE_SIZE as u64
                    {
                        return Err(TraceError::corrupt(
                            at,
                            "snapshot pages",
                            format!("claims {n} pages in a {}-byte payload", h.uncompressed_len),
                        ));
                    }
                    pages_seen += n;
                    page_sections.push(PageSection {
                        offset: at,
                        header: h,
                    });
                }
                SectionKind::SnapshotEnd => {
                    if h.meta[0] != pages_seen || h.meta[1] != page_sections.len() as u64 {
                        return Err(TraceError::corrupt(
                            at,
                            "snapshot end",
                            format!(
                                "claims {} pages in {} sections, found {pages_seen} in {}",
                                h.meta[0],
                                h.meta[1],
                                page_sections.len()
                            ),
                        ));
                    }
                    // Tiny, and read so that no byte of the snapshot goes unchecked.
                    let payload = dec.read_payload(&mut r, &h, at, "snapshot end")?;
                    decode_exact::<()>(payload, at, "snapshot end")?;
                    at = h.end(at);
                    break pages_seen;
                }
                other => {
                    return Err(TraceError::corrupt(
                        at,
                        "snapshot",
                        format!("found {} before the snapshot ended", other.name()),
                    ));
                }
            }
            at = h.end(at);
        };
        let events_start = at;

        let mut reader = RecordingReader {
            r,
            file_size,
            dec,
            header,
            snapshot_begin,
            page_sections,
            total_pages,
            index: Vec::new(),
            stats: Stats::from_counts(&KindCounts::default(), 0),
            recovery: Recovery {
                complete: false,
                valid_events: 0,
                lost_bytes: 0,
                reason: None,
            },
            cache: None,
            version,
        };
        match reader.load_trailer(events_start) {
            Ok(()) => {}
            Err(why) => reader.scan(events_start, why)?,
        }
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn chunk_index(&self) -> &[ChunkInfo] {
        &self.index
    }

    /// The guest console output the recording holds (its console events, in order).
    pub fn console(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.events_from(0) {
            if let Event::Console(c) = e? {
                out.extend_from_slice(&c.bytes);
            }
        }
        Ok(out)
    }

    pub fn event_count(&self) -> u64 {
        self.index.last().map_or(0, |c| c.end_event())
    }

    /// Non-zero pages in the snapshot.
    pub fn snapshot_page_count(&self) -> u64 {
        self.total_pages
    }

    /// The snapshot's CPU state.
    pub fn snapshot_cpu(&mut self) -> Result<CpuState> {
        let (at, h) = self.snapshot_begin;
        let what = "snapshot CPU state";
        let payload = self.dec.read_payload(&mut self.r, &h, at, what)?;
        decode_exact(payload, at, what)
    }

    /// The snapshot's pages, one section decoded at a time.
    pub fn snapshot_pages(&mut self) -> SnapshotPages<'_, R> {
        SnapshotPages {
            reader: self,
            section: 0,
            pages: Vec::new().into_iter(),
            done: false,
        }
    }

    /// The whole snapshot (pages absent from it are zero).
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let cpu = self.snapshot_cpu()?;
        // The count was checked against the sections' page counts; each is at most
        // PAGES_PER_SECTION and backed by a payload that exists in the file.
        let mut pages = Vec::with_capacity(self.total_pages.min(1 << 16) as usize);
        for page in self.snapshot_pages() {
            pages.push(page?);
        }
        Ok(Snapshot { cpu, pages })
    }

    /// The number of the first event whose `icount` is at least `icount` (the event
    /// count if there is none). Events are stored in execution order, so their icounts
    /// do not decrease; the search uses the index and decodes at most one chunk.
    pub fn first_event_at(&mut self, icount: u64) -> Result<u64> {
        let i = self.index.partition_point(|c| c.last_icount < icount);
        let Some(chunk) = self.index.get(i).copied() else {
            return Ok(self.event_count());
        };
        if chunk.first_icount >= icount {
            return Ok(chunk.first_event);
        }
        // Load through the cache, then search inside the chunk.
        self.event(chunk.first_event)?;
        let (_, events) = self.cache.as_ref().expect("cache just filled");
        let k = events.partition_point(|e| e.icount() < icount);
        Ok(chunk.first_event + k as u64)
    }

    /// Event number `n`.
    pub fn event(&mut self, n: u64) -> Result<Event> {
        let i = self.chunk_of(n)?;
        if self.cache.as_ref().is_none_or(|(c, _)| *c != i) {
            self.cache = None;
            let events = self.read_chunk(i)?;
            self.cache = Some((i, events));
        }
        let (_, events) = self.cache.as_ref().expect("cache just filled");
        let chunk = &self.index[i];
        Ok(events[(n - chunk.first_event) as usize].clone())
    }

    /// Events from number `n` to the end, decoding one chunk at a time. After an error
    /// the iterator ends.
    pub fn events_from(&mut self, n: u64) -> EventsFrom<'_, R> {
        let count = self.event_count();
        EventsFrom {
            reader: self,
            next: n,
            chunk: None,
            pending_error: (n > count).then_some(TraceError::EventOutOfRange { index: n, count }),
            done: false,
        }
    }

    /// Reads every section payload and checks it (checksums, decoding, counts).
    pub fn verify(&mut self) -> Result<()> {
        self.snapshot_cpu()?;
        for page in self.snapshot_pages() {
            page?;
        }
        for i in 0..self.index.len() {
            self.read_chunk(i)?;
        }
        Ok(())
    }

    /// The events of chunk `i` of the index, decoded and checked.
    pub fn chunk(&mut self, i: usize) -> Result<Vec<Event>> {
        if i >= self.index.len() {
            return Err(TraceError::EventOutOfRange {
                index: self
                    .index
                    .get(i)
                    .map_or(self.event_count(), |c| c.first_event),
                count: self.event_count(),
            });
        }
        self.read_chunk(i)
    }

    /// Number of sections the snapshot's pages are stored in.
    pub fn snapshot_section_count(&self) -> usize {
        self.page_sections.len()
    }

    /// The address and [`RecordingSource`] location of every page of snapshot section
    /// `i`, whose payload is decoded and checked (its pages are not kept).
    pub fn snapshot_section_locations(&mut self, i: usize) -> Result<Vec<(u64, u64)>> {
        let (_, pages) = self.snapshot_section_payload(i)?;
        let base = i as u64 * PAGES_PER_SECTION as u64;
        Ok(pages
            .iter()
            .enumerate()
            .map(|(k, &(gpa, _))| (gpa, base + k as u64))
            .collect())
    }

    /// Turns the reader into the source of the snapshot pages located by
    /// [`Self::snapshot_section_locations`], for a lazily mapped guest memory, and of
    /// the event chunks of its index, through a cache of at most `event_cache` bytes of
    /// decoded chunks.
    pub fn into_source(self, event_cache: u64) -> RecordingSource<R> {
        RecordingSource {
            state: Mutex::new(SourceState {
                reader: self,
                sections: VecDeque::new(),
                chunks: ChunkCache::new(event_cache),
            }),
        }
    }

    /// The decompressed payload of snapshot section `i` and (address, offset in the
    /// payload) of each of its pages, checked against the section's header.
    fn snapshot_section_payload(&mut self, i: usize) -> Result<(&[u8], PageOffsets)> {
        let Some(&s) = self.page_sections.get(i) else {
            return Err(TraceError::corrupt(
                self.snapshot_begin.0,
                "snapshot",
                format!("has no pages section {i}"),
            ));
        };
        let what = format!("snapshot pages section {i}");
        let payload = self
            .dec
            .read_payload(&mut self.r, &s.header, s.offset, &what)?;
        let pages = page_offsets(payload)
            .map_err(|problem| TraceError::corrupt(s.offset, &what, problem))?;
        if pages.len() as u64 != s.header.meta[0] {
            return Err(TraceError::corrupt(
                s.offset,
                what,
                format!(
                    "header says {} pages, payload has {}",
                    s.header.meta[0],
                    pages.len()
                ),
            ));
        }
        Ok((payload, pages))
    }

    fn chunk_of(&self, n: u64) -> Result<usize> {
        let count = self.event_count();
        if n >= count {
            return Err(TraceError::EventOutOfRange { index: n, count });
        }
        Ok(self.index.partition_point(|c| c.end_event() <= n))
    }

    /// Decodes chunk `i` and checks it against its index entry.
    fn read_chunk(&mut self, i: usize) -> Result<Vec<Event>> {
        let info = self.index[i];
        let what = format!("event chunk {i}");
        let h = self
            .dec
            .read_header(&mut self.r, info.offset, self.file_size)
            .map_err(|e| in_context(e, &what))?;
        check_chunk_header(&h, info.offset, &what, info.first_event)?;
        if h.meta
            != [
                info.first_event,
                u64::from(info.count),
                info.first_icount,
                info.last_icount,
            ]
        {
            return Err(TraceError::corrupt(
                info.offset,
                what,
                "section header disagrees with the trailer's index",
            ));
        }
        decode_chunk(
            &mut self.dec,
            &mut self.r,
            &h,
            info.offset,
            &what,
            self.version,
        )
    }

    /// Loads index and statistics through the footer; Err says why it could not.
    fn load_trailer(&mut self, events_start: u64) -> std::result::Result<(), String> {
        if self.file_size < events_start + FOOTER_LEN {
            return Err("no footer (the recording was not finished)".into());
        }
        let footer_at = self.file_size - FOOTER_LEN;
        let mut b = [0u8; FOOTER_LEN as usize];
        self.r
            .seek(SeekFrom::Start(footer_at))
            .and_then(|_| self.r.read_exact(&mut b))
            .map_err(|e| format!("reading the footer: {e}"))?;
        let at = decode_footer(&b)?;
        if at < events_start || at > footer_at {
            return Err(format!(
                "footer points at offset {at}, outside the event area {events_start}..{footer_at}"
            ));
        }
        let (index, stored) = self
            .read_trailer_at(at, footer_at)
            .map_err(|e| e.to_string())?;

        // The index must describe contiguous events in increasing, in-range chunks.
        let mut next_event = 0u64;
        let mut min_offset = events_start;
        for (i, c) in index.iter().enumerate() {
            if c.offset < min_offset
                || c.offset >= at
                || c.count == 0
                || c.first_event != next_event
            {
                return Err(format!(
                    "trailer at offset {at}: index entry {i} is inconsistent"
                ));
            }
            next_event = c.end_event();
            min_offset = c.offset + SECTION_HEADER_LEN;
        }
        if stored.total_events != next_event || stored.counts.sum() != Some(next_event) {
            return Err(format!(
                "trailer at offset {at}: statistics count {} events, the index {next_event}",
                stored.total_events
            ));
        }
        self.index = index;
        self.stats = stats_from_stored(&stored, true, self.file_size);
        self.stats.counted = self.header.machine.counter != CounterSourceKind::None;
        self.recovery = Recovery {
            complete: true,
            valid_events: next_event,
            lost_bytes: 0,
            reason: None,
        };
        Ok(())
    }

    /// Reads the trailer section at `at`, which must end at `end`.
    fn read_trailer_at(&mut self, at: u64, end: u64) -> Result<(Vec<ChunkInfo>, StoredStats)> {
        let what = "trailer";
        let h = self
            .dec
            .read_header(&mut self.r, at, self.file_size)
            .map_err(|e| in_context(e, what))?;
        if h.kind != SectionKind::Trailer {
            return Err(TraceError::corrupt(
                at,
                what,
                format!("found {} where the trailer should be", h.kind.name()),
            ));
        }
        if h.end(at) != end {
            return Err(TraceError::corrupt(
                at,
                what,
                format!("ends at offset {}, expected {end}", h.end(at)),
            ));
        }
        let payload = self.dec.read_payload(&mut self.r, &h, at, what)?;
        // Every chunk of the index is at least a section header before the trailer.
        let max_chunks = at / SECTION_HEADER_LEN;
        let mut b = payload;
        let count = take_varint(&mut b).map_err(|p| TraceError::corrupt(at, what, p))?;
        if count > max_chunks {
            return Err(TraceError::corrupt(
                at,
                what,
                format!("index claims {count} chunks before offset {at}"),
            ));
        }
        let mut index = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (c, rest) = postcard::take_from_bytes::<ChunkInfo>(b).map_err(|e| {
                TraceError::corrupt(at, what, format!("cannot decode payload: {e}"))
            })?;
            index.push(c);
            b = rest;
        }
        Ok((index, decode_exact(b, at, what)?))
    }

    /// Rebuilds the index by reading every chunk from `events_start` until the first
    /// damage. Only a failure to read the file at all is an error.
    fn scan(&mut self, events_start: u64, footer_problem: String) -> Result<()> {
        let mut at = events_start;
        let mut counts = KindCounts::default();
        let mut next_event = 0u64;
        let mut event_bytes = 0u64;
        let mut trailer: Option<StoredStats> = None;
        let stop: String = loop {
            if at == self.file_size {
                break format!("file ends at offset {at} after {} chunks", self.index.len());
            }
            let what = format!("event chunk {}", self.index.len());
            let h = match self.dec.read_header(&mut self.r, at, self.file_size) {
                Ok(h) => h,
                Err(TraceError::Io(e)) => return Err(TraceError::Io(e)),
                Err(e) => break in_context(e, &what).to_string(),
            };
            match h.kind {
                SectionKind::EventChunk => {
                    let events = check_chunk_header(&h, at, &what, next_event).and_then(|()| {
                        decode_chunk(&mut self.dec, &mut self.r, &h, at, &what, self.version)
                    });
                    let events = match events {
                        Ok(ev) => ev,
                        Err(TraceError::Io(e)) => return Err(TraceError::Io(e)),
                        Err(e) => break e.to_string(),
                    };
                    for e in &events {
                        counts.add(e.kind());
                    }
                    self.index.push(ChunkInfo {
                        offset: at,
                        first_event: next_event,
                        count: events.len() as u32,
                        first_icount: h.meta[2],
                        last_icount: h.meta[3],
                    });
                    next_event += events.len() as u64;
                    event_bytes += h.end(at) - at;
                    at = h.end(at);
                }
                SectionKind::Trailer => {
                    // The footer is damaged but the trailer may be whole: use its
                    // statistics if they agree with the chunks found.
                    match self.read_trailer_at(at, h.end(at)) {
                        Ok((index, stored))
                            if index == self.index
                                && stored.total_events == next_event
                                && stored.counts == counts =>
                        {
                            let trailer_at = at;
                            at = h.end(at);
                            trailer = Some(stored);
                            break format!("trailer at offset {trailer_at} is intact");
                        }
                        Ok(_) => {
                            break format!(
                                "trailer at offset {at} disagrees with the chunks found"
                            );
                        }
                        Err(e) => break e.to_string(),
                    }
                }
                other => break format!("unexpected {} section at offset {at}", other.name()),
            }
        };
        let mut stats = match &trailer {
            Some(stored) => stats_from_stored(stored, false, self.file_size),
            None => {
                let mut s = Stats::from_counts(&counts, next_event);
                s.kernel_instructions = self.index.last().map_or(0, |c| c.last_icount);
                s.end_reason = "unknown (the recording was cut short)".into();
                s.set_sizes(self.file_size, event_bytes);
                s
            }
        };
        stats.complete = false;
        stats.counted = self.header.machine.counter != CounterSourceKind::None;
        self.stats = stats;
        self.recovery = Recovery {
            complete: false,
            valid_events: next_event,
            lost_bytes: self.file_size - at,
            reason: Some(format!(
                "{footer_problem}; recovered {next_event} events in {} chunks by scanning; stopped: {stop}",
                self.index.len()
            )),
        };
        Ok(())
    }
}

/// Checks the preamble and returns the file's format version.
fn read_preamble<R: Read + Seek>(r: &mut R, file_size: u64) -> Result<u32> {
    let mut b = [0u8; PREAMBLE_LEN as usize];
    let n = file_size.min(PREAMBLE_LEN) as usize;
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut b[..n])?;
    let m = n.min(FILE_MAGIC.len());
    if b[..m] != FILE_MAGIC[..m] {
        return Err(TraceError::BadMagic {
            found: b[..m].to_vec(),
        });
    }
    if (n as u64) < PREAMBLE_LEN {
        return Err(TraceError::truncated(
            0,
            format!("file preamble ({n} of {PREAMBLE_LEN} bytes present)"),
        ));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if ![FORMAT_VERSION, v4::VERSION, v3::VERSION, v2::VERSION].contains(&version) {
        return Err(TraceError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if b[12..16] != [0; 4] {
        return Err(TraceError::corrupt(
            8,
            "file preamble",
            format!("reserved bytes are {:02x?}, not zero", &b[12..16]),
        ));
    }
    Ok(version)
}

/// Names the structure a framing error was found in ("section" becomes "event chunk 7").
fn in_context(e: TraceError, what: &str) -> TraceError {
    match e {
        TraceError::Corrupt {
            offset,
            what: w,
            problem,
        } => TraceError::Corrupt {
            offset,
            what: format!("{what} ({w} at offset {offset})"),
            problem,
        },
        TraceError::Truncated { offset, what: w } => TraceError::Truncated {
            offset,
            what: format!("{what}: {w}"),
        },
        e => e,
    }
}

fn check_chunk_header(h: &SectionHeader, at: u64, what: &str, first_event: u64) -> Result<()> {
    if h.kind != SectionKind::EventChunk {
        return Err(TraceError::corrupt(
            at,
            what,
            format!("is a {} section", h.kind.name()),
        ));
    }
    let [first, count, ..] = h.meta;
    if first != first_event {
        return Err(TraceError::corrupt(
            at,
            what,
            format!("starts at event {first}, expected {first_event}"),
        ));
    }
    if count == 0 || count > MAX_CHUNK_EVENTS || count > h.uncompressed_len {
        return Err(TraceError::corrupt(
            at,
            what,
            format!(
                "claims {count} events in a {}-byte payload (at most {MAX_CHUNK_EVENTS} per chunk)",
                h.uncompressed_len
            ),
        ));
    }
    Ok(())
}

/// Decodes a chunk whose header was checked, and checks its events against it.
fn decode_chunk<R: Read + Seek>(
    dec: &mut SectionDecoder,
    r: &mut R,
    h: &SectionHeader,
    at: u64,
    what: &str,
    version: u32,
) -> Result<Vec<Event>> {
    let payload = dec.read_payload(r, h, at, what)?;
    let [_, count, first_icount, last_icount] = h.meta;
    // The count was checked against MAX_CHUNK_EVENTS; the payload's own count must
    // agree before anything is allocated for its events.
    let mut b = payload;
    let stored = take_varint(&mut b).map_err(|p| TraceError::corrupt(at, what, p))?;
    if stored != count {
        return Err(TraceError::corrupt(
            at,
            what,
            format!("header says {count} events, payload has {stored}"),
        ));
    }
    let mut events = Vec::with_capacity(count as usize);
    for i in 0..count {
        let decoded = if version == v2::VERSION {
            postcard::take_from_bytes::<v2::Event>(b).map(|(e, rest)| (Event::from(e), rest))
        } else {
            postcard::take_from_bytes::<Event>(b)
        };
        let (e, rest) = decoded.map_err(|e| {
            TraceError::corrupt(at, what, format!("cannot decode event {i} of {count}: {e}"))
        })?;
        events.push(e);
        b = rest;
    }
    if !b.is_empty() {
        return Err(TraceError::corrupt(
            at,
            what,
            format!("{} bytes left over after the payload", b.len()),
        ));
    }
    let (first, last) = (events[0].icount(), events[events.len() - 1].icount());
    if (first, last) != (first_icount, last_icount) {
        return Err(TraceError::corrupt(
            at,
            what,
            format!(
                "header says icounts {first_icount}..={last_icount}, events have {first}..={last}"
            ),
        ));
    }
    Ok(events)
}

fn stats_from_stored(stored: &StoredStats, complete: bool, file_size: u64) -> Stats {
    let mut s = Stats::from_counts(&stored.counts, stored.total_events);
    s.kernel_instructions = stored.kernel_instructions;
    s.duration_s = stored.duration_s;
    s.end_reason = stored.end_reason.clone();
    s.complete = complete;
    s.set_sizes(file_size, stored.event_bytes);
    s
}

/// Iterator over events from a given number; see [`RecordingReader::events_from`].
pub struct EventsFrom<'a, R> {
    reader: &'a mut RecordingReader<R>,
    next: u64,
    chunk: Option<std::iter::Skip<std::vec::IntoIter<Event>>>,
    pending_error: Option<TraceError>,
    done: bool,
}

impl<R: Read + Seek> Iterator for EventsFrom<'_, R> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.done = true;
            return Some(Err(e));
        }
        if let Some(ev) = self.chunk.as_mut().and_then(|c| c.next()) {
            self.next += 1;
            return Some(Ok(ev));
        }
        if self.next >= self.reader.event_count() {
            self.done = true;
            return None;
        }
        // The spent chunk goes before the next is decoded: one chunk held at a time.
        self.chunk = None;
        let loaded = self.reader.chunk_of(self.next).and_then(|i| {
            let first = self.reader.index[i].first_event;
            self.reader.read_chunk(i).map(|ev| (ev, first))
        });
        match loaded {
            Ok((events, first)) => {
                let mut it = events.into_iter().skip((self.next - first) as usize);
                let ev = it.next();
                self.chunk = Some(it);
                self.next += 1;
                ev.map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over the snapshot's pages; see [`RecordingReader::snapshot_pages`].
pub struct SnapshotPages<'a, R> {
    reader: &'a mut RecordingReader<R>,
    section: usize,
    pages: std::vec::IntoIter<SnapshotPage>,
    done: bool,
}

impl<R: Read + Seek> SnapshotPages<'_, R> {
    fn load(&mut self) -> Result<Vec<SnapshotPage>> {
        let (payload, pages) = self.reader.snapshot_section_payload(self.section)?;
        Ok(pages
            .into_iter()
            .map(|(gpa, at)| SnapshotPage {
                gpa,
                data: payload[at..at + PAGE_SIZE].to_vec(),
            })
            .collect())
    }
}

impl<R: Read + Seek> Iterator for SnapshotPages<'_, R> {
    type Item = Result<SnapshotPage>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(p) = self.pages.next() {
                return Some(Ok(p));
            }
            if self.section >= self.reader.page_sections.len() {
                self.done = true;
                return None;
            }
            match self.load() {
                Ok(pages) => {
                    self.section += 1;
                    self.pages = pages.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// (address, offset in the payload) of each page of a pages section.
type PageOffsets = Vec<(u64, usize)>;

/// Where the pages of a pages section's payload (the postcard `Vec<SnapshotPage>`) are:
/// (address, offset of its 4 KiB). Done by hand because serde decodes a `Vec<u8>` byte
/// by byte; the encoding is the same.
fn page_offsets(payload: &[u8]) -> std::result::Result<PageOffsets, String> {
    let mut b = payload;
    let count = take_varint(&mut b)?;
    if count > PAGES_PER_SECTION as u64 {
        return Err(format!(
            "{count} pages, more than {PAGES_PER_SECTION} per section"
        ));
    }
    let mut pages = Vec::with_capacity(count as usize);
    for i in 0..count {
        let gpa = take_varint(&mut b)?;
        let len = take_varint(&mut b)?;
        if len != PAGE_SIZE as u64 || b.len() < PAGE_SIZE {
            return Err(format!(
                "page {i} at {gpa:#x} has {len} bytes ({} left)",
                b.len()
            ));
        }
        if !gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(format!("page {i} at {gpa:#x} is not page aligned"));
        }
        pages.push((gpa, payload.len() - b.len()));
        b = &b[PAGE_SIZE..];
    }
    if !b.is_empty() {
        return Err(format!("{} bytes left over after the pages", b.len()));
    }
    Ok(pages)
}

/// Decompressed snapshot sections a [`RecordingSource`] keeps (4 MiB each at most): a
/// kernel touches a few areas at once (its text, data, page tables, boot data).
const SOURCE_SECTIONS: usize = 8;

/// A recording as replay reads it while it runs ([`RecordingReader::into_source`]): the
/// snapshot's pages, read when a lazily mapped guest memory first touches them, and the
/// event chunks, decoded when replay needs them. Keeps the last few snapshot sections it
/// decompressed, since a kernel touches neighbouring pages together, and the chunks used
/// last within the event cache's budget.
pub struct RecordingSource<R> {
    state: Mutex<SourceState<R>>,
}

struct SourceState<R> {
    reader: RecordingReader<R>,
    /// (section, payload, offset of each page in it), the most recently used first.
    sections: VecDeque<(usize, Vec<u8>, Vec<usize>)>,
    chunks: ChunkCache,
}

impl<R> RecordingSource<R> {
    fn state(&self) -> std::sync::MutexGuard<'_, SourceState<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<R: Read + Seek + Send> PageSource for RecordingSource<R> {
    fn read_page(&self, loc: u64, out: &mut Page) -> std::result::Result<(), String> {
        let section = (loc / PAGES_PER_SECTION as u64) as usize;
        let k = (loc % PAGES_PER_SECTION as u64) as usize;
        let mut st = self.state();
        let st = &mut *st;
        match st.sections.iter().position(|(i, ..)| *i == section) {
            Some(0) => {}
            Some(j) => {
                let hit = st.sections.remove(j).expect("position found");
                st.sections.push_front(hit);
            }
            None => {
                let (payload, pages) = st
                    .reader
                    .snapshot_section_payload(section)
                    .map_err(|e| e.to_string())?;
                let payload = payload.to_vec();
                st.sections.truncate(SOURCE_SECTIONS - 1);
                st.sections.push_front((
                    section,
                    payload,
                    pages.into_iter().map(|p| p.1).collect(),
                ));
            }
        }
        let (_, payload, offsets) = &st.sections[0];
        let at = *offsets
            .get(k)
            .ok_or_else(|| format!("snapshot pages section {section} has no page {k}"))?;
        out.copy_from_slice(&payload[at..at + PAGE_SIZE]);
        Ok(())
    }
}

impl<R: Read + Seek + Send> EventSource for RecordingSource<R> {
    fn chunk(&self, i: usize) -> Result<Arc<EventChunk>> {
        let mut st = self.state();
        if let Some(c) = st.chunks.get(i) {
            return Ok(c);
        }
        let Some(first_event) = st.reader.index.get(i).map(|c| c.first_event) else {
            return Err(TraceError::EventOutOfRange {
                index: st.reader.event_count(),
                count: st.reader.event_count(),
            });
        };
        let chunk = Arc::new(EventChunk::new(first_event, st.reader.read_chunk(i)?));
        st.chunks.insert(i, chunk.clone());
        Ok(chunk)
    }

    fn cache_usage(&self) -> CacheUsage {
        self.state().chunks.usage()
    }
}

/// A postcard varint (LEB128, at most 10 bytes for a u64).
fn take_varint(b: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&byte, rest)) = b.split_first() else {
            return Err("payload ends inside a number".into());
        };
        *b = rest;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err("number does not fit in 64 bits".into());
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("number longer than 10 bytes".into())
}
