//! The images a recording starts from, read with limits: a kernel image and an initrd
//! are read whole but never beyond the guest's memory (a larger file is refused by its
//! size, before it is read), the ELF named for symbols never beyond
//! [`MAX_SYMBOL_FILE`]; a disk image is read where the guest reads it, never whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest disk image: fw_cfg gives a file's size in 32 bits.
pub const MAX_DISK_SIZE: u64 = u32::MAX as u64;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `size` is None where the file has no size of its own (a pipe, a character
    /// device) and more than `limit` bytes were read from it.
    #[error(
        "{what} {} is {}, more than {}: {}",
        path.display(),
        size.map_or(format!("longer than {limit} bytes"), |s| format!("{s} bytes")),
        what.limit(*limit),
        what.remedy()
    )]
    TooLarge {
        what: FileKind,
        path: PathBuf,
        size: Option<u64>,
        limit: u64,
    },
    #[error(
        "disk {} is {kind}: a disk image must be a regular file or a block device (its \
         size must be known)",
        path.display()
    )]
    DiskNotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "disk {} is {size} bytes: fw_cfg gives a file's size in 32 bits, so a disk image \
         holds at most {MAX_DISK_SIZE} bytes",
        path.display()
    )]
    DiskTooLarge { path: PathBuf, size: u64 },
}

/// What a file read whole is for, which sets how much of it the recorder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The kernel image: loaded into guest RAM, so at most its size.
    Kernel,
    /// A kernel ELF: its loaded segments must fit in guest RAM (the loader checks),
    /// but the file also holds symbols and DWARF, so at most [`MAX_SYMBOL_FILE`].
    KernelElf,
    /// A Linux initrd: loaded into guest RAM, so at most its size (Linux refuses a
    /// larger one too).
    Initrd,
    /// The ELF the kernel's symbols come from: read, not loaded; at most
    /// [`MAX_SYMBOL_FILE`].
    SymbolFile,
}

/// Largest ELF read for symbols (a distribution's vmlinux with DWARF is about 600 MB).
pub const MAX_SYMBOL_FILE: u64 = 2 << 30;

impl FileKind {
    fn limit(self, limit: u64) -> String {
        match self {
            FileKind::Kernel | FileKind::Initrd => {
                format!("the guest's memory ({} MiB)", limit >> 20)
            }
            FileKind::KernelElf | FileKind::SymbolFile => format!("{} MiB", limit >> 20),
        }
    }

    fn remedy(self) -> &'static str {
        match self {
            FileKind::Kernel => "a kernel must fit in it (give --memory at least its size)",
            FileKind::Initrd => "an initrd must fit in it (give --memory more than its size)",
            FileKind::KernelElf | FileKind::SymbolFile => "is it a kernel's ELF?",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Kernel => "kernel",
            FileKind::KernelElf => "kernel ELF",
            FileKind::Initrd => "initrd",
            FileKind::SymbolFile => "vmlinux",
        })
    }
}

/// Reads the kernel image at `path`: no larger than the guest's memory (`memory`),
/// unless it is an ELF, whose symbols and DWARF need not fit there (its segments must:
/// the loader checks them), at most [`MAX_SYMBOL_FILE`] then. See [`read_whole`].
pub fn read_kernel(path: &Path, memory: u64) -> Result<Vec<u8>, ImageError> {
    read_with_limit(path, |magic| {
        if magic == b"\x7fELF" {
            (FileKind::KernelElf, memory.max(MAX_SYMBOL_FILE))
        } else {
            (FileKind::Kernel, memory)
        }
    })
}

/// Reads the file at `path`, refusing one larger than `limit` bytes: a regular file by
/// its size, before reading it; a file without a size of its own (a pipe) once more
/// than `limit` bytes were read from it.
pub fn read_whole(path: &Path, what: FileKind, limit: u64) -> Result<Vec<u8>, ImageError> {
    read_with_limit(path, |_| (what, limit))
}

/// As [`read_whole`], with what the file is and its limit decided by its first four
/// bytes (fewer if it is shorter), which are read first.
fn read_with_limit(
    path: &Path,
    kind: impl FnOnce(&[u8]) -> (FileKind, u64),
) -> Result<Vec<u8>, ImageError> {
    let open = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let read = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open)?;
    let meta = file.metadata().map_err(read)?;
    let size = meta.is_file().then_some(meta.len());
    let mut image = Vec::new();
    (&mut file).take(4).read_to_end(&mut image).map_err(read)?;
    let (what, limit) = kind(&image);
    let too_large = |size| ImageError::TooLarge {
        what,
        path: path.to_path_buf(),
        size,
        limit,
    };
    if size.is_some_and(|s| s > limit) {
        return Err(too_large(size));
    }
    image.reserve(size.unwrap_or(0) as usize);
    file.take(limit.saturating_add(1) - image.len() as u64)
        .read_to_end(&mut image)
        .map_err(read)?;
    if image.len() as u64 > limit {
        return Err(too_large(None));
    }
    Ok(image)
}

/// A disk image: bytes in memory, or a file read where the guest reads it. Cloning
/// shares it.
#[derive(Debug, Clone)]
pub struct DiskImage {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Arc<[u8]>),
    File { file: Arc<File>, len: u64 },
}

impl DiskImage {
    /// The regular file or block device at `path`, of at most [`MAX_DISK_SIZE`] bytes;
    /// nothing is read yet.
    pub fn open(path: &Path) -> Result<DiskImage, ImageError> {
        let mut file = File::open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let read = |source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(read)?;
        let kind = meta.file_type();
        let len = if kind.is_file() {
            meta.len()
        } else if kind.is_block_device() {
            file.seek(SeekFrom::End(0)).map_err(read)?
        } else {
            let kind = if kind.is_dir() {
                "a directory"
            } else if kind.is_char_device() {
                "a character device"
            } else if kind.is_fifo() {
                "a pipe"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(ImageError::DiskNotAFile {
                path: path.to_path_buf(),
                kind,
            });
        };
        if len > MAX_DISK_SIZE {
            return Err(ImageError::DiskTooLarge {
                path: path.to_path_buf(),
                size: len,
            });
        }
        Ok(DiskImage {
            source: Source::File {
                file: Arc::new(file),
                len,
            },
        })
    }

    /// An image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> DiskImage {
        DiskImage {
            source: Source::Bytes(bytes.into()),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Bytes(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes from `offset`; what lies past the end of the image
    /// (or of a file that shrank since it was opened) reads as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.source {
            Source::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let n = (b.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&b[start..start + n]);
                buf[n..].fill(0);
                Ok(())
            }
            Source::File { file, .. } => {
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf[done..].fill(0);
                Ok(())
            }
        }
    }
}

impl From<Vec<u8>> for DiskImage {
    fn from(bytes: Vec<u8>) -> DiskImage {
        DiskImage::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_kernel_larger_than_the_limit_is_refused_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        assert_eq!(read_kernel(&path, 5000).unwrap().len(), 5000);
        let err = read_kernel(&path, 4999).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    what: FileKind::Kernel,
                    size: Some(5000),
                    limit: 4999,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_kernel_elf_may_be_larger_than_the_memory_its_segments_fit_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(3 << 20, 0xcc);
        std::fs::write(&path, &elf).unwrap();
        assert_eq!(read_kernel(&path, 1 << 20).unwrap(), elf);
        // Not for a bzImage (or anything else), and not beyond the symbol file limit.
        std::fs::write(&path, &elf[4..]).unwrap();
        assert!(matches!(
            read_kernel(&path, 1 << 20),
            Err(ImageError::TooLarge {
                what: FileKind::Kernel,
                ..
            })
        ));
        let f = File::create(&path).unwrap();
        f.write_all_at(b"\x7fELF", 0).unwrap();
        f.set_len(MAX_SYMBOL_FILE + 1).unwrap();
        let err = read_kernel(&path, 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    what: FileKind::KernelElf,
                    limit: MAX_SYMBOL_FILE,
                    ..
                }
            ),
            "{err}"
        );
        // Shorter than its magic: read, and left to the loader to refuse.
        std::fs::write(&path, b"\x7fE").unwrap();
        assert_eq!(read_kernel(&path, 1 << 20).unwrap(), b"\x7fE");
    }

    #[test]
    fn a_kernel_stream_is_read_no_further_than_the_limit() {
        let err = read_kernel(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { size: None, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("longer than 1048576 bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_initrd_larger_than_the_memory_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        // Sparse: refused by its size, not by reading 2 MiB.
        File::create(&path).unwrap().set_len(2 << 20).unwrap();
        let err = read_whole(&path, FileKind::Initrd, 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    what: FileKind::Initrd,
                    size: Some(0x20_0000),
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("initrd ") && text.contains("guest's memory (1 MiB)"),
            "{text}"
        );
        assert_eq!(
            read_whole(&path, FileKind::Initrd, 2 << 20).unwrap().len(),
            2 << 20
        );
        let missing = read_whole(&dir.path().join("nope"), FileKind::Initrd, 1 << 20);
        assert!(
            matches!(missing, Err(ImageError::Open { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn a_disk_must_have_a_size() {
        for (path, kind) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            let err = DiskImage::open(Path::new(path)).unwrap_err();
            assert!(
                matches!(err, ImageError::DiskNotAFile { kind: k, .. } if k == kind),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn a_disk_file_is_read_where_asked_and_zeros_past_its_end() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
        f.write_all(&data).unwrap();
        let disk = DiskImage::open(f.path()).unwrap();
        assert_eq!(disk.len(), 10_000);
        let mut buf = [0xaau8; 100];
        disk.read_at(5000, &mut buf).unwrap();
        assert_eq!(buf[..], data[5000..5100]);
        disk.read_at(9950, &mut buf).unwrap();
        assert_eq!(buf[..50], data[9950..]);
        assert!(buf[50..].iter().all(|&b| b == 0));
        let mem = DiskImage::from(data.clone());
        mem.read_at(9950, &mut buf).unwrap();
        assert_eq!(buf[..50], data[9950..]);
        assert!(buf[50..].iter().all(|&b| b == 0));
        mem.read_at(u64::MAX, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_sparse_disk_larger_than_fw_cfg_sizes_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(MAX_DISK_SIZE + 1).unwrap();
        let err = DiskImage::open(f.path()).unwrap_err();
        assert!(matches!(err, ImageError::DiskTooLarge { .. }), "{err}");
        f.as_file().set_len(MAX_DISK_SIZE).unwrap();
        assert_eq!(DiskImage::open(f.path()).unwrap().len(), MAX_DISK_SIZE);
    }
}
