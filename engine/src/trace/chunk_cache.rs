//! Decoded event chunks kept for replay: a recording's events are read from the file a
//! chunk at a time through this cache instead of being held all at once, so what replay
//! holds of them does not grow with the recording.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::Event;

use super::error::Result;

/// The events of one chunk of the recording, decoded and checked.
#[derive(Debug)]
pub struct EventChunk {
    /// Number of the chunk's first event (over the recording).
    pub first_event: u64,
    pub events: Box<[Event]>,
    /// What the chunk takes in memory ([`EventChunk::bytes_of`]), counted once.
    bytes: u64,
}

impl EventChunk {
    pub fn new(first_event: u64, events: Vec<Event>) -> EventChunk {
        let events = events.into_boxed_slice();
        let bytes = Self::bytes_of(&events);
        EventChunk {
            first_event,
            events,
            bytes,
        }
    }

    /// Bytes a chunk of these events takes: the events and the bytes they carry.
    pub fn bytes_of(events: &[Event]) -> u64 {
        events.iter().map(Event::memory_bytes).sum()
    }

    /// Bytes this chunk takes ([`EventChunk::bytes_of`] its events).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// One past the number of its last event.
    pub fn end_event(&self) -> u64 {
        self.first_event + self.events.len() as u64
    }

    /// Event number `n`, if the chunk holds it.
    pub fn get(&self, n: u64) -> Option<&Event> {
        let k = n.checked_sub(self.first_event)?;
        self.events.get(usize::try_from(k).ok()?)
    }
}

/// Where a recording's event chunks come from, decoded ([`super::RecordingSource`]).
pub trait EventSource: Send + Sync {
    /// Chunk `i` of the recording's chunk index.
    fn chunk(&self, i: usize) -> Result<Arc<EventChunk>>;
    /// What the cache of decoded chunks holds now.
    fn cache_usage(&self) -> CacheUsage;
}

/// What a [`ChunkCache`] holds and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes of the chunks held ([`EventChunk::bytes`]).
    pub bytes: u64,
    /// Most bytes it holds, unless one chunk alone is larger (it then holds that one).
    pub budget: u64,
    /// Chunks held.
    pub chunks: usize,
    /// Most bytes it has held at once.
    pub peak_bytes: u64,
    /// Chunks decoded into it so far (a chunk evicted and needed again counts again).
    pub loads: u64,
}

/// Most chunks a cache holds, whatever their size: a lookup walks them.
pub const MAX_CACHED_CHUNKS: usize = 256;

/// The decoded chunks used last, within a byte budget: the least recently used go
/// first. A replay reads its events in order and time travel jumps between a few
/// places, so a few recent chunks serve nearly every read.
#[derive(Debug)]
pub struct ChunkCache {
    /// (chunk number, chunk), the most recently used first.
    chunks: VecDeque<(usize, Arc<EventChunk>)>,
    usage: CacheUsage,
}

impl ChunkCache {
    pub fn new(budget: u64) -> ChunkCache {
        ChunkCache {
            chunks: VecDeque::new(),
            usage: CacheUsage {
                budget,
                ..CacheUsage::default()
            },
        }
    }

    /// Chunk `i` if held, now the most recently used.
    pub fn get(&mut self, i: usize) -> Option<Arc<EventChunk>> {
        let at = self.chunks.iter().position(|(k, _)| *k == i)?;
        if at != 0 {
            let hit = self.chunks.remove(at).expect("position found");
            self.chunks.push_front(hit);
        }
        Some(self.chunks[0].1.clone())
    }

    /// Holds chunk `i`, just decoded, evicting the least recently used chunks until it
    /// fits (all of them if it alone is over the budget).
    pub fn insert(&mut self, i: usize, chunk: Arc<EventChunk>) {
        self.usage.loads += 1;
        if let Some(at) = self.chunks.iter().position(|(k, _)| *k == i) {
            let (_, old) = self.chunks.remove(at).expect("position found");
            self.usage.bytes -= old.bytes();
        }
        while let Some((_, last)) = self.chunks.back()
            && (self.usage.bytes + chunk.bytes() > self.usage.budget
                || self.chunks.len() >= MAX_CACHED_CHUNKS)
        {
            self.usage.bytes -= last.bytes();
            self.chunks.pop_back();
        }
        self.usage.bytes += chunk.bytes();
        self.usage.peak_bytes = self.usage.peak_bytes.max(self.usage.bytes);
        self.chunks.push_front((i, chunk));
        self.usage.chunks = self.chunks.len();
    }

    pub fn usage(&self) -> CacheUsage {
        CacheUsage {
            chunks: self.chunks.len(),
            ..self.usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConsoleOutput, Event};

    fn chunk(first: u64, n: usize, carried: usize) -> Arc<EventChunk> {
        let events = (0..n)
            .map(|k| {
                Event::Console(ConsoleOutput {
                    icount: first + k as u64,
                    bytes: vec![b'x'; carried],
                })
            })
            .collect();
        Arc::new(EventChunk::new(first, events))
    }

    #[test]
    fn a_chunk_counts_its_events_and_their_bytes() {
        let c = chunk(10, 3, 5);
        let event = std::mem::size_of::<Event>() as u64;
        assert_eq!(c.bytes(), 3 * (event + 5));
        assert_eq!((c.first_event, c.end_event()), (10, 13));
        assert_eq!(c.get(12).map(Event::icount), Some(12));
        assert!(c.get(13).is_none() && c.get(9).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_evicts_the_least_recently_used() {
        let one = chunk(0, 4, 100).bytes();
        let mut cache = ChunkCache::new(3 * one);
        for i in 0..3 {
            cache.insert(i, chunk(4 * i as u64, 4, 100));
        }
        assert_eq!(cache.usage().bytes, 3 * one);
        // Chunk 0 used: chunk 1 is now the least recently used and goes first.
        assert!(cache.get(0).is_some());
        cache.insert(3, chunk(12, 4, 100));
        let u = cache.usage();
        assert_eq!(
            (u.bytes, u.chunks, u.peak_bytes, u.loads),
            (3 * one, 3, 3 * one, 4)
        );
        assert!(cache.get(1).is_none());
        assert!(cache.get(0).is_some() && cache.get(2).is_some() && cache.get(3).is_some());
        // Inserting a chunk again replaces it; the count stays exact.
        cache.insert(3, chunk(12, 4, 100));
        assert_eq!(cache.usage().bytes, 3 * one);
    }

    #[test]
    fn a_chunk_over_the_budget_is_held_alone() {
        let mut cache = ChunkCache::new(1000);
        cache.insert(0, chunk(0, 1, 10));
        cache.insert(1, chunk(1, 2, 5000));
        let u = cache.usage();
        assert_eq!(u.chunks, 1);
        assert_eq!(u.bytes, chunk(1, 2, 5000).bytes());
        assert!(cache.get(0).is_none() && cache.get(1).is_some());
        cache.insert(2, chunk(3, 1, 10));
        assert_eq!(cache.usage().chunks, 1);
    }
}
