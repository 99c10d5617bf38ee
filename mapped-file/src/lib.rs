//! A file's bytes mapped read-only into memory, or bytes owned in memory, behind one
//! shared, cheaply cloned and sliced type: [`Bytes`].
//!
//! The debugger reads kernel images of hundreds of megabytes (a distribution's
//! vmlinux with its DWARF information) of which one screen touches a few pages.
//! Mapping the file lets the kernel page in what is read, from its page cache, instead
//! of the process copying the whole file onto its heap; slices of it (an ELF section)
//! are a range of the same mapping, so a DWARF reader holds them without copying.
//!
//! Bytes that are not in a file (an image embedded in a recording, a section
//! decompressed from the file) are owned bytes behind the same type.
//!
//! # The mapping caveat
//!
//! A mapping shows the file as it is, not as it was when mapped: if another process
//! rewrites the file in place while it is mapped, the bytes read change underneath the
//! reader, and if it truncates the file, reading the pages past its new end raises
//! `SIGBUS`. This is the usual caveat of every program that maps its input (debuggers,
//! linkers, `object`/`gimli` users). Tools that build a kernel write a new file and
//! rename it over the old one (the mapping keeps the old file's pages), so the caveat
//! concerns only in-place writers.
//!
//! The engine forbids `unsafe`; this crate holds the `unsafe` that mapping a file and
//! lending its bytes to gimli take, each with the reason it holds.

use std::fmt;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

/// Errors mapping a file.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory, a device (`/dev/zero`), a pipe: nothing with a fixed length to map.
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("mapping {path}: {source}")]
    Map {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the bytes live in.
enum Backing {
    Mapped(Mmap),
    Owned(Box<[u8]>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(b) => b,
        }
    }
}

/// Shared bytes: a range of a read-only file mapping or of owned bytes. Cloning and
/// slicing share the backing (no copy); the backing is freed, or unmapped, with the
/// last `Bytes` that refers to it.
#[derive(Clone)]
pub struct Bytes {
    backing: Arc<Backing>,
    /// Always within the backing's bytes.
    range: Range<usize>,
}

impl Bytes {
    /// Maps the regular file at `path` read-only (see the crate's caveat on files
    /// changed while mapped). An empty file gives empty bytes.
    pub fn map_path(path: &Path) -> Result<Bytes, MapError> {
        let file = File::open(path).map_err(|source| MapError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Bytes::map_file(&file, path)
    }

    /// Maps an open file read-only, as [`Bytes::map_path`] (`path` names it in
    /// errors). The mapping stays valid after `file` is closed.
    pub fn map_file(file: &File, path: &Path) -> Result<Bytes, MapError> {
        // The descriptor's own metadata: the file checked is the file mapped.
        let meta = file.metadata().map_err(|source| MapError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(MapError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        if meta.len() == 0 {
            return Ok(Bytes::from(Vec::new()));
        }
        // SAFETY: the mapping is read-only and private to this `Bytes` (and its clones,
        // which keep it alive through the `Arc`: no slice of it outlives it). What
        // `Mmap::map` cannot promise is that no other process changes the file while
        // it is mapped; that is the usual mmap caveat the crate documentation states
        // (an in-place rewrite changes bytes under readers, a truncation faults).
        let map = unsafe { Mmap::map(file) }.map_err(|source| MapError::Map {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Bytes {
            range: 0..map.len(),
            backing: Arc::new(Backing::Mapped(map)),
        })
    }

    /// Whether the bytes are a file mapping (not owned bytes).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.backing, Backing::Mapped(_))
    }

    /// The bytes at `range` of these bytes, sharing them; None where `range` is not
    /// within them.
    pub fn slice(&self, range: Range<usize>) -> Option<Bytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(Bytes {
            backing: self.backing.clone(),
            range: self.range.start + range.start..self.range.start + range.end,
        })
    }

    /// Where `part` lies in these bytes, if it is a slice of them (same memory, not
    /// equal contents).
    pub fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let base = self.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len())?;
        (end <= self.len()).then_some(start..end)
    }

    /// `part` as shared bytes: a slice of these bytes when it is one (no copy), else a
    /// copy of it (bytes decompressed or made elsewhere).
    pub fn share(&self, part: &[u8]) -> Bytes {
        match self.range_of(part).and_then(|r| self.slice(r)) {
            Some(b) => b,
            None => Bytes::from(part.to_vec()),
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes {
            range: 0..v.len(),
            backing: Arc::new(Backing::Owned(v.into_boxed_slice())),
        }
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes::from(v.to_vec())
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.backing.bytes()[self.range.clone()]
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bytes")
            .field("mapped", &self.is_mapped())
            .field("range", &self.range)
            .finish()
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

// SAFETY: `deref` returns a range of the backing, which lives on the heap (the owned
// bytes' box) or in the mapping (fixed until unmapped), behind an `Arc`: moving a
// `Bytes` moves only the `Arc` pointer and the range, never the bytes, so the address
// `deref` returns does not change while the `Bytes` lives.
unsafe impl stable_deref_trait::StableDeref for Bytes {}

// SAFETY: a clone shares the same `Arc` backing and the same range, so it derefs to
// the very same address as the original (the bytes are never copied on clone).
unsafe impl stable_deref_trait::CloneStableDeref for Bytes {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("a temporary file");
        f.write_all(contents).expect("write");
        f.flush().expect("flush");
        f
    }

    #[test]
    fn a_mapped_file_reads_as_its_contents_and_slices_share_it() {
        let contents: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let f = temp_file(&contents);
        let b = Bytes::map_path(f.path()).expect("maps");
        assert!(b.is_mapped());
        assert_eq!(&*b, &contents[..]);
        let s = b.slice(100..4200).expect("in range");
        assert_eq!(&*s, &contents[100..4200]);
        // A slice and a clone point into the same memory.
        assert_eq!(s.as_ptr(), b[100..].as_ptr());
        assert_eq!(s.clone().as_ptr(), s.as_ptr());
        // A slice of a slice.
        let ss = s.slice(10..20).expect("in range");
        assert_eq!(&*ss, &contents[110..120]);
        assert_eq!(ss.as_ptr(), b[110..].as_ptr());
        // `share` of a part of it is a slice, of other bytes a copy.
        assert_eq!(b.range_of(&b[300..400]), Some(300..400));
        let shared = b.share(&b[300..400]);
        assert_eq!(shared.as_ptr(), b[300..].as_ptr());
        let other = vec![1u8, 2, 3];
        assert_eq!(b.range_of(&other), None);
        let copied = b.share(&other);
        assert!(!copied.is_mapped());
        assert_eq!(&*copied, &[1, 2, 3]);
        // The mapping outlives the original handle through its slices.
        drop(b);
        assert_eq!(&*ss, &contents[110..120]);
    }

    #[test]
    fn out_of_range_slices_are_refused() {
        let b = Bytes::from(vec![0u8; 16]);
        assert!(b.slice(0..16).is_some());
        assert!(b.slice(16..16).is_some_and(|s| s.is_empty()));
        assert!(b.slice(0..17).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 9..8;
        assert!(b.slice(reversed).is_none());
        let s = b.slice(4..8).expect("in range");
        assert!(s.slice(0..5).is_none());
        assert_eq!(s.range_of(&b[2..6]), None, "starts before the slice");
        assert_eq!(s.range_of(&b[6..10]), None, "ends after the slice");
    }

    #[test]
    fn what_is_not_a_regular_file_is_an_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert!(matches!(
            Bytes::map_path(dir.path()),
            Err(MapError::NotAFile { .. })
        ));
        assert!(matches!(
            Bytes::map_path(Path::new("/dev/zero")),
            Err(MapError::NotAFile { .. })
        ));
        assert!(matches!(
            Bytes::map_path(&dir.path().join("missing")),
            Err(MapError::Open { .. })
        ));
        let empty = temp_file(b"");
        let b = Bytes::map_path(empty.path()).expect("an empty file maps");
        assert!(b.is_empty());
    }
}
