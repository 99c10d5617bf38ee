//! A recording's events as replay reads them: from the file's chunk index through a
//! bounded cache of decoded chunks ([`crate::trace::ChunkCache`]), shared by every copy
//! of a replay, with where each event was applied.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::event::{Event, Icount};
use crate::trace::{CacheUsage, ChunkInfo, EventChunk, EventSource, TraceError};

/// An event not applied yet by any replay of the recording.
const NOT_APPLIED: u64 = u64::MAX;

/// Bytes the table of where events were applied takes per event.
pub const APPLIED_BYTES_PER_EVENT: u64 = std::mem::size_of::<AtomicU64>() as u64;

/// Bytes the shared events take per chunk of the index, besides the decoded chunks and
/// the applied table's entries: the index entry (held here and by the reader the
/// chunks are read with) and the chunk's slot of the applied table.
pub(crate) const INDEX_BYTES_PER_CHUNK: u64 = (2 * std::mem::size_of::<ChunkInfo>()
    + std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>())
    as u64;

/// One event of the recording, held through its decoded chunk (cheap to clone: the
/// chunk is shared).
#[derive(Debug, Clone)]
pub struct EventRef {
    chunk: Arc<EventChunk>,
    at: usize,
}

impl EventRef {
    /// Event `n` of `chunk`, which holds it.
    pub(crate) fn new(chunk: Arc<EventChunk>, n: u64) -> EventRef {
        let at = (n - chunk.first_event) as usize;
        debug_assert!(at < chunk.events.len());
        EventRef { chunk, at }
    }
}

impl Deref for EventRef {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.chunk.events[self.at]
    }
}

/// The events of a recording, shared by every replay of it.
pub(crate) struct RecordedEvents {
    index: Box<[ChunkInfo]>,
    source: Arc<dyn EventSource>,
    /// Events replay may read: those of the index within the budget, fewer once a
    /// chunk turns out damaged.
    available: AtomicU64,
    /// `available` when opened.
    opened_with: u64,
    /// Why events of the index are not available, once a chunk turned out damaged.
    damage: Mutex<Option<String>>,
    /// Where each event was applied, per chunk of the index, allocated when a replay
    /// first applies an event of the chunk.
    applied: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Events applied from the first on, by any replay (they apply in order).
    applied_known: AtomicU64,
}

impl RecordedEvents {
    /// The events of the first `available` of `index` (the rest are past the budget or
    /// after damage found while opening).
    pub(crate) fn new(
        index: &[ChunkInfo],
        source: Arc<dyn EventSource>,
        available: u64,
    ) -> RecordedEvents {
        RecordedEvents {
            index: index.into(),
            source,
            available: AtomicU64::new(available),
            opened_with: available,
            damage: Mutex::new(None),
            applied: index.iter().map(|_| OnceLock::new()).collect(),
            applied_known: AtomicU64::new(0),
        }
    }

    /// Events replay may read.
    pub(crate) fn count(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    /// Whether a chunk was found damaged since the events were opened.
    pub(crate) fn damaged(&self) -> bool {
        self.count() < self.opened_with
    }

    /// Why the events past [`Self::count`] are not read, if a chunk was found damaged.
    pub(crate) fn damage(&self) -> Option<String> {
        self.damage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Number of the index's chunk holding event `n`, if it is available.
    fn chunk_of(&self, n: u64) -> Option<usize> {
        (n < self.count()).then(|| self.index.partition_point(|c| c.end_event() <= n))
    }

    /// The decoded chunk holding event `n`. A chunk that cannot be read ends the events
    /// before it, as if the recording stopped there, and says why.
    pub(crate) fn chunk_holding(&self, n: u64) -> Option<Arc<EventChunk>> {
        self.chunk_at(n).map(|(_, c)| c)
    }

    /// [`Self::chunk_holding`] and its number in the index.
    pub(crate) fn chunk_at(&self, n: u64) -> Option<(usize, Arc<EventChunk>)> {
        let i = self.chunk_of(n)?;
        match self.source.chunk(i) {
            Ok(c) if c.first_event == self.index[i].first_event => Some((i, c)),
            Ok(_) => {
                self.mark_damaged(i, "the chunk read is not the one indexed".into());
                None
            }
            Err(e) => {
                let why = match e {
                    TraceError::Io(e) => format!("reading event chunk {i}: {e}"),
                    e => e.to_string(),
                };
                self.mark_damaged(i, why);
                None
            }
        }
    }

    fn mark_damaged(&self, i: usize, why: String) {
        let first = self.index[i].first_event;
        let before = self.available.fetch_min(first, Ordering::Relaxed);
        if first < before {
            *self.damage.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{why} ({first} events before it are replayed)"));
        }
    }

    /// Event number `n`.
    pub(crate) fn get(&self, n: u64) -> Option<EventRef> {
        let chunk = self.chunk_holding(n)?;
        let at = usize::try_from(n - chunk.first_event).ok()?;
        (at < chunk.events.len()).then_some(EventRef { chunk, at })
    }

    /// The number of the last event before `before` that `found` accepts, searching
    /// back a chunk at a time.
    pub(crate) fn rfind(&self, before: u64, found: impl Fn(&Event) -> bool) -> Option<u64> {
        let mut end = before.min(self.count());
        while end > 0 {
            let chunk = self.chunk_holding(end - 1)?;
            let upto = (end - chunk.first_event) as usize;
            if let Some(k) = chunk.events[..upto].iter().rposition(&found) {
                return Some(chunk.first_event + k as u64);
            }
            end = chunk.first_event;
        }
        None
    }

    /// The icount recorded for the first event of the chunk holding `n` or, past the
    /// available events, for none: a lower bound of event `n`'s position, from the
    /// index alone.
    pub(crate) fn position_lower_bound(&self, n: u64) -> Option<Icount> {
        let i = self.chunk_of(n)?;
        Some(self.index[i].first_icount)
    }

    /// Records that event `n`, of chunk `i` of the index, took effect at `position`
    /// (on the event-position axis).
    pub(crate) fn set_applied(&self, i: usize, n: u64, position: Icount) {
        let Some(info) = self.index.get(i) else {
            return;
        };
        let Some(k) = n
            .checked_sub(info.first_event)
            .filter(|&k| k < u64::from(info.count))
        else {
            return;
        };
        // Entries for the events replay may read: those within the budget.
        let entries = u64::from(info.count).min(self.opened_with.saturating_sub(info.first_event));
        let table = self.applied[i]
            .get_or_init(|| (0..entries).map(|_| AtomicU64::new(NOT_APPLIED)).collect());
        let Some(slot) = table.get(k as usize) else {
            return;
        };
        // Replays over known ground find it set already: no write.
        if slot.load(Ordering::Relaxed) != position {
            slot.store(position, Ordering::Relaxed);
        }
        if self.applied_known.load(Ordering::Relaxed) <= n {
            self.applied_known.fetch_max(n + 1, Ordering::Relaxed);
        }
    }

    /// Where event `n` took effect, once a replay has applied it.
    pub(crate) fn applied(&self, n: u64) -> Option<Icount> {
        let i = self.chunk_of(n)?;
        let table = self.applied[i].get()?;
        match table
            .get((n - self.index[i].first_event) as usize)?
            .load(Ordering::Relaxed)
        {
            NOT_APPLIED => None,
            p => Some(p),
        }
    }

    /// How many events, from the first, some replay has applied.
    pub(crate) fn applied_known(&self) -> u64 {
        self.applied_known.load(Ordering::Relaxed)
    }

    /// Events per column over positions `0..=extent` (each column `extent + 1 /
    /// columns` wide, the last taking what lies beyond), each event where it was
    /// applied, else where it was recorded. Positions of applied events come from the
    /// applied table; a chunk of events not applied yet whose recorded positions all
    /// fall in one column is counted from the index without being read.
    pub(crate) fn density(&self, columns: usize, extent: Icount) -> Vec<u32> {
        let columns = columns.max(1);
        let column = |p: Icount| {
            ((u128::from(p) * columns as u128 / (u128::from(extent) + 1)) as usize).min(columns - 1)
        };
        let mut d = vec![0u32; columns];
        let mut add = |p: Icount, n: u64| {
            let c = &mut d[column(p)];
            *c = c.saturating_add(n.min(u64::from(u32::MAX)) as u32);
        };
        let count = self.count();
        let known = self.applied_known();
        for (i, info) in self.index.iter().enumerate() {
            if info.first_event >= count {
                break;
            }
            let end = info.end_event().min(count);
            let table = self.applied[i].get();
            let applied_to = known.clamp(info.first_event, end);
            if applied_to == info.first_event
                && column(info.first_icount) == column(info.last_icount)
            {
                add(info.first_icount, end - info.first_event);
                continue;
            }
            let mut chunk = None;
            for n in info.first_event..end {
                let k = (n - info.first_event) as usize;
                match table
                    .and_then(|t| t.get(k))
                    .map(|a| a.load(Ordering::Relaxed))
                {
                    Some(p) if p != NOT_APPLIED => add(p, 1),
                    _ => {
                        if chunk.is_none() {
                            chunk = self.chunk_holding(n);
                        }
                        match chunk.as_ref().and_then(|c| c.get(n)) {
                            Some(e) => add(e.icount(), 1),
                            None => return d,
                        }
                    }
                }
            }
        }
        d
    }

    /// Bytes the table of where events were applied takes now.
    pub(crate) fn applied_bytes(&self) -> u64 {
        self.applied
            .iter()
            .filter_map(OnceLock::get)
            .map(|t| t.len() as u64 * APPLIED_BYTES_PER_EVENT)
            .sum()
    }

    pub(crate) fn cache_usage(&self) -> CacheUsage {
        self.source.cache_usage()
    }
}

/// The events of a range, in order, read a chunk at a time
/// ([`crate::replay::Replay::events`]). Ends early where a chunk cannot be read.
pub struct Events {
    pub(crate) events: Arc<RecordedEvents>,
    pub(crate) range: Range<u64>,
    pub(crate) chunk: Option<Arc<EventChunk>>,
}

impl Iterator for Events {
    type Item = (u64, EventRef);

    fn next(&mut self) -> Option<(u64, EventRef)> {
        let n = self.range.start;
        if n >= self.range.end || n >= self.events.count() {
            return None;
        }
        let chunk = match &self.chunk {
            Some(c) if c.get(n).is_some() => c.clone(),
            _ => {
                let Some(c) = self.events.chunk_holding(n) else {
                    self.range.start = self.range.end;
                    return None;
                };
                self.chunk = Some(c.clone());
                c
            }
        };
        self.range.start += 1;
        let at = (n - chunk.first_event) as usize;
        Some((n, EventRef { chunk, at }))
    }
}
