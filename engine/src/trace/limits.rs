//! What a recording may claim. The checksums are FNV-1a, which a crafted file passes, so
//! every length and count a file states is checked against these limits (and against the
//! bytes actually present) before anything is allocated for it; memory then follows what
//! was verified, not what the bytes claim.
//!
//! | what | limit |
//! |---|---|
//! | one section's payload, compressed | [`super::section::MAX_SECTION_COMPRESSED`] and the bytes left in the file |
//! | one section's payload, decompressed | [`super::section::MAX_SECTION_UNCOMPRESSED`] (64 MiB), checked against the zstd frame's content size and enforced while decompressing: the output grows only as zstd produces it |
//! | zstd window | 2^[`MAX_WINDOW_LOG`] bytes (the writer uses levels up to [`MAX_ZSTD_LEVEL`]) |
//! | events in one chunk | [`MAX_CHUNK_EVENTS`], and one byte of payload each |
//! | chunks in the trailer's index | one section header (72 bytes) of the file each |
//! | symbols, CPUID entries, MSRs, the host's MSR table, unmodelled undefined results | [`MAX_SYMBOLS`], [`MAX_CPUID_ENTRIES`], [`MAX_MSRS`], [`MAX_MSR_TABLE`], [`MAX_UNMODELLED`] |
//! | memory regions, guest size | [`crate::memory::MAX_REGIONS`], [`crate::memory::MAX_GUEST_MEMORY`] (checked when replay builds the memory; regions are allocated lazily) |
//!
//! Replay holds more than one section at a time: it maps the snapshot's pages to where
//! they are in the file (read when first touched) and reads event chunks through a cache
//! of decoded chunks ([`super::ChunkCache`]), holding the map, the cache and where each
//! event was applied within [`crate::replay::ReplayLimits`].

use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

use crate::cpu::MsrBehaviour;
use crate::cpu::undefined::Unmodelled;
use crate::state::{CpuidEntry, MemoryRegion, Symbol};

/// Most events in one chunk. The writer cuts chunks at 4,096 events by default and
/// refuses a configuration above this. A decoded event takes up to about 200 bytes, so
/// a chunk holds at most about 13 MB of events (plus the bytes its events carry, which
/// are part of its payload).
pub const MAX_CHUNK_EVENTS: u64 = 1 << 16;
/// Most symbols in a header (a Linux kernel has about 10^5).
pub const MAX_SYMBOLS: usize = 1 << 20;
/// Most CPUID entries in a header (KVM takes at most 256).
pub const MAX_CPUID_ENTRIES: usize = 1 << 12;
/// Most MSRs in a CPU state.
pub const MAX_MSRS: usize = 1 << 12;
/// Most entries of the MSR table in a header (the recorder measures a few dozen).
pub const MAX_MSR_TABLE: usize = 1 << 12;
/// Most unmodelled undefined results in a header.
pub const MAX_UNMODELLED: usize = 1 << 12;
/// Largest zstd window the reader accepts (8 MiB): what zstd levels up to
/// [`MAX_ZSTD_LEVEL`] use, and what the decoder allocates at most for a frame.
pub const MAX_WINDOW_LOG: u32 = 23;
/// Highest zstd level the writer takes (levels above 19 use windows over 8 MiB).
pub const MAX_ZSTD_LEVEL: i32 = 19;

thread_local! {
    /// The limit the last refused vector ran into on this thread: postcard reports a
    /// deserializer's own error without its message, so the reader picks it up here.
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Takes the reason the last decode on this thread refused a vector, if it did.
pub(crate) fn take_refusal() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

fn refuse<E: Error>(n: usize, max: usize, what: &str) -> E {
    let problem = format!("{n} {what}, more than the {max} a recording may hold");
    REFUSED.with(|r| *r.borrow_mut() = Some(problem.clone()));
    E::custom(problem)
}

/// A `Vec` of at most `max` elements: a longer one is an error before anything is
/// allocated for it.
fn bounded_vec<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T> {
        max: usize,
        what: &'static str,
        t: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > self.max {
                return Err(refuse(claimed, self.max, self.what));
            }
            let mut v = Vec::with_capacity(claimed.min(1024));
            while let Some(x) = seq.next_element()? {
                if v.len() == self.max {
                    return Err(refuse(v.len() + 1, self.max, self.what));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded {
        max,
        what,
        t: PhantomData,
    })
}

pub(crate) fn symbols<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Symbol>, D::Error> {
    bounded_vec(d, MAX_SYMBOLS, "symbols")
}

pub(crate) fn cpuid<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CpuidEntry>, D::Error> {
    bounded_vec(d, MAX_CPUID_ENTRIES, "CPUID entries")
}

pub(crate) fn msrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, u64)>, D::Error> {
    bounded_vec(d, MAX_MSRS, "MSRs")
}

pub(crate) fn msr_table<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(u32, MsrBehaviour)>, D::Error> {
    bounded_vec(d, MAX_MSR_TABLE, "entries of the MSR table")
}

pub(crate) fn regions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MemoryRegion>, D::Error> {
    bounded_vec(d, crate::memory::MAX_REGIONS, "memory regions")
}

pub(crate) fn unmodelled<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Unmodelled>, D::Error> {
    bounded_vec(d, MAX_UNMODELLED, "unmodelled results")
}
