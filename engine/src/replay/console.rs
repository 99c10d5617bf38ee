//! The guest console as replayed so far.

use std::sync::Arc;

/// Bytes per shared chunk.
const CHUNK: usize = 4096;

/// An append-only byte log whose clones share every full chunk. A replay is cloned for
/// every checkpoint; with a plain `Vec<u8>` each checkpoint would copy the whole console
/// output so far (megabytes for a chatty guest, outside the checkpoint budget), here it
/// costs a pointer per 4 KiB and a copy of the last, partial chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleLog {
    full: Vec<Arc<[u8]>>,
    tail: Vec<u8>,
}

impl ConsoleLog {
    pub fn push(&mut self, byte: u8) {
        self.tail.push(byte);
        if self.tail.len() == CHUNK {
            let chunk = std::mem::take(&mut self.tail);
            self.full.push(Arc::from(chunk.into_boxed_slice()));
        }
    }

    pub fn len(&self) -> usize {
        self.full.len() * CHUNK + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.full.clear();
        self.tail.clear();
    }

    /// The bytes from offset `start` to the end (empty past the end).
    pub fn since(&self, start: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len().saturating_sub(start));
        let first = start / CHUNK;
        for (i, chunk) in self.full.iter().enumerate().skip(first) {
            let from = start.saturating_sub(i * CHUNK).min(CHUNK);
            out.extend_from_slice(&chunk[from..]);
        }
        let from = start.saturating_sub(self.full.len() * CHUNK);
        out.extend_from_slice(self.tail.get(from..).unwrap_or_default());
        out
    }

    /// Every byte.
    pub fn to_vec(&self) -> Vec<u8> {
        self.since(0)
    }

    /// At most the last `max` bytes (what a view of the console's end needs).
    pub fn last(&self, max: usize) -> Vec<u8> {
        self.since(self.len().saturating_sub(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_pushed_from_any_offset() {
        let bytes: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i * 7 % 251) as u8).collect();
        let mut log = ConsoleLog::default();
        for &b in &bytes {
            log.push(b);
        }
        assert_eq!(log.len(), bytes.len());
        assert_eq!(log.to_vec(), bytes);
        for start in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 99] {
            assert_eq!(log.since(start), bytes[start..], "from {start}");
        }
        assert!(log.since(bytes.len()).is_empty());
        assert!(log.since(bytes.len() + 5000).is_empty());
        assert_eq!(log.last(10), bytes[bytes.len() - 10..]);
        assert_eq!(log.last(usize::MAX), bytes);
    }

    #[test]
    fn clones_share_full_chunks_and_diverge_independently() {
        let mut a = ConsoleLog::default();
        for i in 0..2 * CHUNK + 5 {
            a.push(i as u8);
        }
        let mut b = a.clone();
        assert!(
            Arc::ptr_eq(&a.full[0], &b.full[0]),
            "full chunks are shared"
        );
        b.push(1);
        a.push(2);
        assert_eq!(a.len(), b.len());
        assert_ne!(a, b);
        assert_eq!(a.since(2 * CHUNK + 5), [2]);
        assert_eq!(b.since(2 * CHUNK + 5), [1]);
        a.clear();
        assert!(a.is_empty() && a.to_vec().is_empty());
    }
}
