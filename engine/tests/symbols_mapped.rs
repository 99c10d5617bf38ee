//! Kernel images are mapped, not copied: opening a large image and answering the first
//! screen's queries (function, source line, frames, a structure's members) allocates a
//! small fraction of the file on the heap; the kernel file a recording names is found
//! only when it is the one recorded; what is not an image is an error.
//!
//! The large image is the demo kernel with its `.debug_str` moved to the end of the file
//! and grown by 64 MiB (empty strings), so that a copy of the file or of its DWARF
//! sections would show; with `KRR_LINUX_OUT` set, the Linux guest's vmlinux is opened
//! too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use krr_engine::replay::Replay;
use krr_engine::symbols::{Symbols, SymbolsError};
use krr_engine::trace::Header;

/// The system allocator, counting per thread the bytes allocated now and the most at
/// once (tests run in parallel threads; each measures its own).
struct Counting;

thread_local! {
    static NOW: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grow(n: usize) {
    let _ = NOW.try_with(|now| {
        now.set(now.get() + n);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now.get())));
    });
}

fn shrink(n: usize) {
    let _ = NOW.try_with(|now| now.set(now.get().saturating_sub(n)));
}

// SAFETY: every call is passed on to the system allocator unchanged; only per-thread
// counters (constant-initialized, without destructors) are updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` was allocated by this allocator (the system's) with `layout`.
        unsafe { System.dealloc(p, layout) };
        shrink(layout.size());
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` was allocated by the system allocator with `layout`.
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            grow(new);
            shrink(layout.size());
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at once on this
/// thread (beyond what was allocated before).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

fn demo_header() -> Header {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr");
    Replay::open(fixture)
        .expect("the demo fixture")
        .header()
        .clone()
}

fn demo_elf() -> Vec<u8> {
    demo_header()
        .kernel_image
        .expect("the demo fixture embeds its kernel")
}

/// `elf` (ELF64, little-endian) with its `.debug_str` section moved to the end of the
/// file and grown by `extra` zero bytes.
fn with_large_debug_str(elf: &[u8], extra: usize) -> Vec<u8> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "an ELF64 little-endian image"
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let names = u64_at(shoff + shstrndx * shentsize + 0x18);
    let header = (0..shnum)
        .map(|i| shoff + i * shentsize)
        .find(|&h| {
            let name = names + u32_at(h);
            elf[name..].starts_with(b".debug_str\0")
        })
        .expect("the demo kernel has .debug_str");
    assert_eq!(
        u64_at(header + 8) & 0x800,
        0,
        ".debug_str is not compressed"
    );
    let (offset, size) = (u64_at(header + 0x18), u64_at(header + 0x20));
    let mut out = elf.to_vec();
    out.resize(out.len().next_multiple_of(8), 0);
    let moved = out.len();
    out.extend_from_slice(&elf[offset..offset + size]);
    out.resize(out.len() + extra, 0);
    out[header + 0x18..header + 0x20].copy_from_slice(&(moved as u64).to_le_bytes());
    out[header + 0x20..header + 0x28].copy_from_slice(&((size + extra) as u64).to_le_bytes());
    out
}

/// What the first screen asks of the demo kernel at `kmain`, as text to compare.
fn first_screen(symbols: &Symbols) -> String {
    let kmain = symbols.address_of("kmain").expect("kmain");
    let pc = kmain + 4;
    let frames = symbols
        .debug_info()
        .map(|d| d.frames_at(pc))
        .unwrap_or_default();
    format!(
        "{} {:?} {:?} {:?} {:?} {:?}",
        symbols.describe(pc),
        symbols.line(pc),
        frames.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        symbols.member("proc", "pid"),
        symbols.member("proc", "name"),
        symbols.unwinder().map(|u| u.covers(pc)),
    )
}

#[test]
fn a_large_image_is_opened_and_queried_without_copying_it() {
    let elf = demo_elf();
    let expected = first_screen(&Symbols::from_elf(&elf).expect("the demo kernel"));
    let large = with_large_debug_str(&elf, 64 << 20);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("large.elf");
    std::fs::write(&path, &large).expect("writing the image");
    let size = large.len();
    drop(large);
    let (symbols, open) = peak_heap(|| Symbols::from_path(&path).expect("the image opens"));
    let (screen, queries) = peak_heap(|| first_screen(&symbols));
    // The same answers as the small image's (the grown .debug_str only adds empty
    // strings), for a small fraction of the file on the heap.
    assert_eq!(screen, expected);
    assert!(screen.contains("main.c"), "{screen}");
    assert!(
        open < size / 32,
        "opening a {size}-byte image allocated {open} bytes"
    );
    assert!(
        queries < size / 32,
        "the first screen's queries allocated {queries} bytes"
    );
}

#[test]
fn the_linux_guest_vmlinux_is_opened_without_copying_it() {
    let Some(out) = std::env::var_os("KRR_LINUX_OUT").map(PathBuf::from) else {
        eprintln!(
            "skipped: KRR_LINUX_OUT is not set (build the Linux guest with \
             guest-agent/linux/build.sh OUTDIR, then set KRR_LINUX_OUT=OUTDIR)"
        );
        return;
    };
    let path = out.join("vmlinux");
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len() as usize;
    let (symbols, open) = peak_heap(|| Symbols::from_path(&path).expect("the vmlinux opens"));
    let (found, queries) = peak_heap(|| {
        let pc = symbols
            .address_of("do_sys_openat2")
            .expect("do_sys_openat2");
        (
            symbols.line(pc).is_some(),
            symbols.member("task_struct", "comm").is_some(),
            symbols.member("task_struct", "pid").is_some(),
            symbols
                .debug_info()
                .is_some_and(|d| !d.frames_at(pc).is_empty()),
        )
    });
    assert_eq!(found, (true, true, true, true));
    // Its symbol table (tens of thousands of names) is on the heap; its DWARF is not.
    assert!(
        open < size / 4,
        "opening a {size}-byte vmlinux allocated {open} bytes"
    );
    assert!(
        queries < size / 4,
        "the first screen's queries allocated {queries} bytes"
    );
}

#[test]
fn the_recorded_kernel_file_is_used_only_when_it_is_the_one_recorded() {
    use sha2::{Digest as _, Sha256};
    let elf = demo_elf();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kernel.elf");
    std::fs::write(&path, &elf).expect("writing the kernel");
    let mut header = demo_header();
    header.kernel_image = None;
    header.kernel.name = path.display().to_string();
    header.kernel.size = elf.len() as u64;
    header.kernel.sha256 = Sha256::digest(&elf).into();
    // The file: its DWARF lines.
    assert!(Symbols::from_header(&header).has_lines());
    // Another file of the same size, a file of another size, a relative name: the
    // recording's own symbol list (no lines).
    let mut other = header.clone();
    other.kernel.sha256[0] ^= 1;
    assert!(!Symbols::from_header(&other).has_lines());
    let mut other = header.clone();
    other.kernel.size += 1;
    assert!(!Symbols::from_header(&other).has_lines());
    let mut other = header.clone();
    other.kernel.name = "kernel.elf".into();
    assert!(!Symbols::from_header(&other).has_lines());
}

#[test]
fn what_is_not_an_image_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    assert!(matches!(
        Symbols::from_path(dir.path()),
        Err(SymbolsError::Map(_))
    ));
    assert!(matches!(
        Symbols::from_path(Path::new("/dev/zero")),
        Err(SymbolsError::Map(_))
    ));
    assert!(Symbols::from_path(&dir.path().join("missing")).is_err());
    // A truncated image: every cut of the demo kernel's header and of its section
    // headers, and one in the middle, is an error or an image, never a panic.
    let elf = demo_elf();
    let path = dir.path().join("cut.elf");
    let mut cuts: Vec<usize> = (0..128).collect();
    cuts.extend((elf.len() - 512..elf.len()).step_by(7));
    cuts.push(elf.len() / 2);
    for cut in cuts {
        std::fs::write(&path, &elf[..cut]).expect("writing");
        if let Ok(symbols) = Symbols::from_path(&path) {
            let _ = first_screen_if_any(&symbols);
        }
    }
    std::fs::write(&path, b"").expect("writing");
    assert!(Symbols::from_path(&path).is_err());
}

/// The first screen's queries on an image that may lack the demo's symbols.
fn first_screen_if_any(symbols: &Symbols) -> Option<String> {
    symbols.address_of("kmain")?;
    Some(first_screen(symbols))
}
